//! iptproxy's build tasks, run as `cargo xtask <task>` (an alias in .cargo/config.toml).
//!
//! - `dist`: man pages and shell completions, generated from the clap definitions and the
//!   config reference, into `target/dist/`.
//! - `deb`: `dist`, then the Debian package with cargo-deb, into `target/debian/`.
//! - `rpm`: `dist` and a release build, then the RPM with rpmbuild, into `target/rpm/`.
//! - `e2e`: the end-to-end test: the .deb installed and driven on a real systemd, in a
//!   Debian container booted with systemd-nspawn on a private network.

mod dist;
mod e2e;
mod man;
mod package;
mod sh;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "iptproxy's build tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Generate man pages and shell completions into target/dist/.
    Dist,
    /// Build the Debian package (needs cargo-deb: `cargo install cargo-deb`).
    Deb,
    /// Build the RPM package (needs rpmbuild).
    Rpm,
    /// Boot a Debian container with systemd, install the .deb, drive the service.
    E2e(e2e::Options),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.task {
        Task::Dist => dist::dist().map(|dir| println!("{}", dir.display())),
        Task::Deb => package::deb().map(|deb| println!("{}", deb.display())),
        Task::Rpm => package::rpm().map(|rpm| println!("{}", rpm.display())),
        Task::E2e(options) => e2e::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map(PathBuf::from).unwrap_or(xtask)
}

/// Cargo's target directory (`CARGO_TARGET_DIR` when set).
fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// iptproxy's version, as its command line reports it.
fn version() -> String {
    use clap::CommandFactory;
    iptproxy::cli::Cli::command().get_version().unwrap_or_default().to_string()
}

/// The date the man pages carry: `SOURCE_DATE_EPOCH` (reproducible builds), else the last
/// commit's, else today.
fn date() -> String {
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().or_else(|| {
        let out = std::process::Command::new("git").args(["log", "-1", "--format=%ct"]).current_dir(root()).output();
        out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    let time = match epoch.and_then(|s| s.parse::<u64>().ok()) {
        Some(secs) => std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        None => std::time::SystemTime::now(),
    };
    humantime::format_rfc3339(time).to_string().chars().take(10).collect()
}
