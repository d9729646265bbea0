//! Confirm or roll back, as iptables-apply does: `iptproxy apply --confirm 30s` applies,
//! then waits for `iptproxy confirm` from another shell (or Enter on its own terminal);
//! without it in time, it puts iptproxy's rules back exactly as they were. For operators
//! changing a remote host: a change that cuts off their own session undoes itself.
//!
//! The rendezvous is a file: the waiting process writes its pid to `pending` in the run
//! directory; `iptproxy confirm` renames it to `confirmed`. A rename is atomic, so at the
//! deadline exactly one of the two wins: the waiter removing `pending` (roll back) or the
//! confirmer renaming it (keep).

use std::fs;
use std::io::{BufRead, ErrorKind, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::chains;
use crate::ruleset::{Hook, Placement, Ruleset, Table};

/// Where the rendezvous files live; `--run-dir` or `IPTPROXY_RUN_DIR` moves it.
pub const DEFAULT_RUN_DIR: &str = "/run/iptproxy";

#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("{}: cannot {what}: {source}", path.display())]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error(
        "another `iptproxy apply --confirm` (pid {pid}) is waiting for confirmation; confirm it or let it roll back first"
    )]
    Busy { pid: u32 },
    #[error("no `iptproxy apply --confirm` is waiting for confirmation (nothing under {})", dir.display())]
    NothingPending { dir: PathBuf },
}

/// Our part of a live ruleset, as a desired one: our chains as they are, and every rule in
/// a built-in chain that jumps to one of ours as a hook (placed last when it stood after
/// all foreign rules, else first). Planning from the live rules to this puts our part back
/// as it was and leaves everything else alone.
pub fn ours(live: &Ruleset) -> Ruleset {
    let mut tables = Vec::new();
    for t in &live.tables {
        let mut mine = Table::new(t.family, t.name.clone());
        for (name, chain) in &t.chains {
            if chains::is_ours(name) {
                mine.chains.insert(name.clone(), chain.clone());
            } else if chain.is_builtin() {
                let jumps_to_ours = |spec: &str| crate::spec::target(spec).is_some_and(|t| chains::is_ours(&t));
                let last_foreign = chain.rules.iter().rposition(|r| !jumps_to_ours(&r.spec));
                for (i, rule) in chain.rules.iter().enumerate().filter(|(_, r)| jumps_to_ours(&r.spec)) {
                    let placement = match last_foreign {
                        Some(f) if i > f => Placement::Last,
                        _ => Placement::First,
                    };
                    mine.hooks.push(Hook { chain: name.clone(), spec: rule.spec.clone(), placement });
                }
            }
        }
        if !mine.chains.is_empty() || !mine.hooks.is_empty() {
            tables.push(mine);
        }
    }
    Ruleset { tables }
}

/// How the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `iptproxy confirm` was run.
    Confirmed,
    /// Enter was pressed on the terminal.
    KeyPressed,
    /// The time ran out.
    TimedOut,
    /// SIGINT or SIGTERM: the operator (or systemd) wants out, so roll back at once.
    Interrupted,
}

/// A waiting `apply --confirm`: its `pending` file exists while this value does.
pub struct Pending {
    pending: PathBuf,
    confirmed: PathBuf,
}

impl Pending {
    /// Claims the rendezvous in `dir` (made `0700` if missing). Refuses when another live
    /// process is waiting; a `pending` file left by a dead one is replaced.
    pub fn claim(dir: &Path) -> Result<Pending, ConfirmError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |path: &Path, what, source| ConfirmError::Io { path: path.to_path_buf(), what, source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io(dir, "create", e))?;
        let (pending, confirmed) = (dir.join("pending"), dir.join("confirmed"));
        if let Some(pid) = read_pid(&pending).filter(|&pid| alive(pid)) {
            return Err(ConfirmError::Busy { pid });
        }
        let _ = fs::remove_file(&confirmed);
        // Written aside, then renamed: `confirm` never sees a half-written pid.
        let tmp = dir.join(format!(".pending.{}", std::process::id()));
        fs::write(&tmp, format!("{}\n", std::process::id())).map_err(|e| io(&tmp, "write", e))?;
        fs::rename(&tmp, &pending).map_err(|e| io(&pending, "create", e))?;
        Ok(Pending { pending, confirmed })
    }

    /// Waits until confirmed, `timeout` passes, or `interrupted` is set; with a terminal on
    /// stdin, Enter confirms too (end of input or a hang-up never does).
    pub fn wait(&self, timeout: Duration, interrupted: &AtomicBool) -> Answer {
        let keys = std::io::stdin().is_terminal().then(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                if matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) {
                    let _ = tx.send(());
                }
            });
            rx
        });
        let deadline = Instant::now() + timeout;
        loop {
            if self.confirmed() {
                return Answer::Confirmed;
            }
            if keys.as_ref().is_some_and(|rx| rx.try_recv().is_ok()) && self.withdraw() {
                return Answer::KeyPressed;
            }
            let late = Instant::now() >= deadline;
            if late || interrupted.load(Ordering::SeqCst) {
                // Whoever takes `pending` away decides: if `confirm` renamed it first, it stands.
                return match self.withdraw() {
                    true if late => Answer::TimedOut,
                    true => Answer::Interrupted,
                    false => Answer::Confirmed,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn confirmed(&self) -> bool {
        read_pid(&self.confirmed) == Some(std::process::id())
    }

    /// Takes `pending` away; false when `confirm` already had it.
    fn withdraw(&self) -> bool {
        match fs::remove_file(&self.pending) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => !self.confirmed(),
            Err(_) => true,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if read_pid(&self.pending) == Some(std::process::id()) {
            let _ = fs::remove_file(&self.pending);
        }
        if self.confirmed() {
            let _ = fs::remove_file(&self.confirmed);
        }
    }
}

/// `iptproxy confirm`: keeps the rules of the waiting apply. Returns its pid.
pub fn confirm(dir: &Path) -> Result<u32, ConfirmError> {
    let pending = dir.join("pending");
    let nothing = || ConfirmError::NothingPending { dir: dir.to_path_buf() };
    let pid = read_pid(&pending).ok_or_else(nothing)?;
    if !alive(pid) {
        let _ = fs::remove_file(&pending);
        return Err(nothing());
    }
    match fs::rename(&pending, dir.join("confirmed")) {
        Ok(()) => Ok(pid),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(nothing()),
        Err(source) => Err(ConfirmError::Io { path: pending, what: "rename", source }),
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    // Signal 0 checks that the process exists; EPERM would mean it does, but not ours.
    !matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Chain, Family, Rule};

    #[test]
    fn ours_keeps_our_chains_and_the_jumps_to_them_only() {
        let mut t = Table::new(Family::Ipv4, "filter");
        let builtin = |rules: &[&str]| Chain {
            policy: Some("ACCEPT".into()),
            rules: rules.iter().map(|r| Rule::new(*r)).collect(),
        };
        t.chains.insert(
            "FORWARD".into(),
            builtin(&["-j IPTPROXY-FIREWALL", "-j DOCKER-USER", "-j ACCEPT", "-j IPTPROXY-FORWARD"]),
        );
        t.chains.insert("INPUT".into(), builtin(&["-j ACCEPT"]));
        t.chains.insert("DOCKER-USER".into(), Chain::user(vec![Rule::new("-j RETURN")]));
        t.chains.insert("IPTPROXY-FORWARD".into(), Chain::user(vec![Rule::new("-j ACCEPT")]));
        let mine = ours(&Ruleset { tables: vec![t] });
        let m = &mine.tables[0];
        assert_eq!(m.chains.keys().collect::<Vec<_>>(), ["IPTPROXY-FORWARD"]);
        let hooks: Vec<_> = m.hooks.iter().map(|h| (h.spec.as_str(), h.placement)).collect();
        assert_eq!(hooks, [("-j IPTPROXY-FIREWALL", Placement::First), ("-j IPTPROXY-FORWARD", Placement::Last)]);
        assert!(ours(&Ruleset { tables: vec![Table::new(Family::Ipv6, "nat")] }).tables.is_empty());
    }

    #[test]
    fn one_waiter_at_a_time_and_confirm_needs_one() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        assert!(matches!(confirm(&run), Err(ConfirmError::NothingPending { .. })));
        let p = Pending::claim(&run).unwrap();
        assert!(matches!(Pending::claim(&run), Err(ConfirmError::Busy { .. })));
        assert_eq!(confirm(&run).unwrap(), std::process::id());
        assert_eq!(p.wait(Duration::from_secs(60), &AtomicBool::new(false)), Answer::Confirmed);
        drop(p);
        assert!(fs::read_dir(&run).unwrap().next().is_none(), "the rendezvous is cleaned up");

        // A waiter that died leaves a pending file that nobody can confirm.
        fs::write(run.join("pending"), "999999999\n").unwrap();
        assert!(matches!(confirm(&run), Err(ConfirmError::NothingPending { .. })));
        let p = Pending::claim(&run).unwrap();
        let stop = AtomicBool::new(true);
        assert_eq!(p.wait(Duration::from_secs(60), &stop), Answer::Interrupted);
        assert_eq!(p.wait(Duration::ZERO, &AtomicBool::new(false)), Answer::TimedOut);
    }
}
