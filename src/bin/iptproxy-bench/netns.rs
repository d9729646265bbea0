//! A throwaway network namespace, deleted when dropped (also on error or panic), and the
//! iptables tools of one backend run inside it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Every namespace alive, for [`delete_all`] when a signal ends the benchmark (Drop does
/// not run then).
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Deletes every namespace this process made and has not deleted yet.
pub fn delete_all() {
    let names = LIVE.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
    for name in names {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
}

pub struct Netns {
    pub name: String,
    pub backend: String,
}

impl Netns {
    pub fn new(backend: &str) -> Result<Netns> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("iptp-bench-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let out = Command::new("ip").args(["netns", "add", &name]).output().context("running `ip netns add`")?;
        if !out.status.success() {
            bail!("`ip netns add {name}` failed (root needed): {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        if let Ok(mut live) = LIVE.lock() {
            live.push(name.clone());
        }
        let ns = Netns { name, backend: backend.to_string() };
        ns.check(ns.command("ip").args(["link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// A command that runs inside the namespace (`ip netns exec` execs it: same pid).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `iptables-nft-save`, `iptables-legacy-restore`, ...
    pub fn tool(&self, suffix: &str) -> String {
        format!("iptables-{}{suffix}", self.backend)
    }

    fn check(&self, cmd: &mut Command) -> Result<()> {
        let out = cmd.stdin(Stdio::null()).output().context("running a command in the namespace")?;
        if !out.status.success() {
            bail!(
                "in {}: {:?} failed ({}): {}",
                self.name,
                cmd,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Feeds `input` to `iptables-restore --noflush --wait`, timed.
    pub fn restore(&self, input: &str) -> Result<Duration> {
        self.restore_with(&self.tool("-restore"), input)
    }

    /// The same with another restore program (`ip6tables-nft-restore`).
    pub fn restore_with(&self, program: &str, input: &str) -> Result<Duration> {
        let start = Instant::now();
        let mut child = self
            .command(program)
            .args(["--noflush", "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running iptables-restore")?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means the tool exited early; its status says why.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{program} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(start.elapsed())
    }

    /// `iptables-save`, timed, with its output.
    pub fn save(&self) -> Result<(Duration, String)> {
        let start = Instant::now();
        let out = self.command(&self.tool("-save")).stdin(Stdio::null()).output().context("running iptables-save")?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!("{} failed after {:.1} s ({})", self.tool("-save"), took.as_secs_f64(), out.status);
        }
        Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Whether `chain` in `table` has a rule containing `needle` (`iptables -S CHAIN`: cheap
    /// at any size, unlike a full save).
    pub fn chain_has(&self, table: &str, chain: &str, needle: &str) -> bool {
        let out = self.command(&self.tool("")).args(["-w", "-t", table, "-S", chain]).stderr(Stdio::null()).output();
        out.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(needle))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|n| n != &self.name);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
