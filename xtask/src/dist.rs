//! `cargo xtask dist`: the generated files the packages ship, in `target/dist/`.
//!
//! ```text
//! target/dist/man/            iptproxy.1 iptproxy-*.1 iptproxyd.8 iptproxy.toml.5
//! target/dist/completions/    bash/iptproxy zsh/_iptproxy fish/iptproxy.fish (and iptproxyd's)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use iptproxy::cli::{Cli, DaemonCli};

use crate::man;

pub fn dir() -> PathBuf {
    crate::target().join("dist")
}

/// Writes the man pages and completions; returns the directory.
pub fn dist() -> Result<PathBuf> {
    let dist = dir();
    // Start clean so a renamed subcommand leaves no stale page behind.
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    let man_dir = dist.join("man");
    create(&man_dir)?;
    for page in man::pages() {
        write(&man_dir.join(&page.file), page.text.as_bytes())?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let dir = dist.join("completions").join(shell.to_string());
        create(&dir)?;
        for (name, mut cmd) in [("iptproxy", Cli::command()), ("iptproxyd", DaemonCli::command())] {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut text);
            write(&dir.join(completion_file(shell, name)), &text)?;
        }
    }
    Ok(dist)
}

/// The file name each shell looks for: `iptproxy` (bash), `_iptproxy` (zsh), `iptproxy.fish`.
pub fn completion_file(shell: Shell, name: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{name}"),
        Shell::Fish => format!("{name}.fish"),
        _ => name.to_string(),
    }
}

fn create(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
