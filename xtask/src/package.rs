//! `cargo xtask deb` and `cargo xtask rpm`: the packages, from a release build and `dist`.
//!
//! The Debian package is described in Cargo.toml (`[package.metadata.deb]`) and built by
//! cargo-deb; the RPM by `packaging/rpm/iptproxy.spec` and rpmbuild.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::sh::{self, cmd};

/// Builds the .deb; returns its path.
pub fn deb() -> Result<PathBuf> {
    crate::dist::dist()?;
    if !sh::output(&mut cmd("cargo", ["deb", "--version"])).is_ok_and(|o| o.status.success()) {
        bail!("cargo-deb is not installed: `cargo install --locked cargo-deb`");
    }
    // cargo-deb builds the release binaries itself, then packs them with the assets; the
    // debug symbols go to a separate -dbgsym package.
    let out =
        sh::read(cmd("cargo", ["deb", "--locked", "--package", "iptproxy", "--dbgsym"]).current_dir(crate::root()))?;
    let deb = out.lines().rev().find(|l| l.ends_with(".deb")).context("cargo deb printed no .deb path")?;
    Ok(PathBuf::from(deb.trim()))
}

/// Builds the .rpm from the spec with prebuilt binaries (`--define prebuilt 1`); returns its path.
pub fn rpm() -> Result<PathBuf> {
    if !sh::have("rpmbuild") {
        bail!("rpmbuild is not installed (Debian: `apt-get install rpm`; Fedora: `dnf install rpm-build`)");
    }
    crate::dist::dist()?;
    sh::run(cmd("cargo", ["build", "--release", "--locked", "--package", "iptproxy"]).current_dir(crate::root()))?;
    let top = crate::target().join("rpm");
    let _ = fs::remove_dir_all(&top);
    let spec = crate::root().join("packaging/rpm/iptproxy.spec");
    let define = |name: &str, value: String| ["--define".to_string(), format!("{name} {value}")];
    let mut args: Vec<String> = vec!["-bb".into()];
    args.extend(define("_topdir", top.display().to_string()));
    args.extend(define("version", crate::version()));
    args.extend(define("prebuilt", crate::root().display().to_string()));
    args.extend(define("cargo_target_dir", crate::target().display().to_string()));
    // rpm without systemd-rpm-macros (Debian's) gets minimal equivalents.
    let macros = sh::read(&mut cmd("rpm", ["--eval", "%{?systemd_post:yes}"])).unwrap_or_default();
    if macros.trim() != "yes" {
        args.push(format!("--load={}", crate::root().join("packaging/rpm/macros.systemd-fallback").display()));
    }
    args.push(spec.display().to_string());
    // The build host's package database (Debian's, say) knows nothing of rpm's BuildRequires.
    if !sh::have("dnf") && !sh::have("yum") && !sh::have("zypper") {
        args.push("--nodeps".into());
    }
    sh::run(&mut cmd("rpmbuild", &args))?;
    let rpms = top.join("RPMS");
    let found = fs::read_dir(&rpms)
        .with_context(|| format!("reading {}", rpms.display()))?
        .filter_map(|arch| fs::read_dir(arch.ok()?.path()).ok())
        .flatten()
        .filter_map(|f| f.ok().map(|f| f.path()))
        .find(|p| p.extension().is_some_and(|e| e == "rpm"));
    found.context("rpmbuild made no .rpm")
}
