//! What the daemon knows about itself: shown in systemd's `STATUS=` line, and written
//! atomically to the state file (`/run/iptproxy/state.json`) for `iptproxy status`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::plan::Summary;

pub const DEFAULT_STATE_FILE: &str = "/run/iptproxy/state.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub pid: u32,
    pub backend: String,
    pub config_dir: PathBuf,
    /// Unix seconds, like every time here.
    pub started: u64,
    pub updated: u64,
    /// The `STATUS=` line at `updated`.
    pub status: String,
    /// The config in force (the last valid one); `None` until one has loaded.
    pub config: Option<Counts>,
    /// Whether the kernel's rules are known to equal the config in force.
    pub in_sync: bool,
    /// The last apply that changed something.
    pub last_apply: Option<Applied>,
    /// The last time the live rules were read and found equal (or made equal).
    pub last_full_sync: Option<u64>,
    /// Why the files on disk are not in force, when they are invalid.
    pub config_error: Option<Stamped>,
    /// Why the rules could not be applied, while that lasts.
    pub apply_error: Option<Failure>,
    pub canary_hits: u64,
    pub last_canary_hit: Option<Stamped>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub services: usize,
    pub endpoints: usize,
    pub files: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub at: u64,
    pub chains_added: usize,
    pub chains_changed: usize,
    pub chains_deleted: usize,
    pub rules_added: usize,
    pub rules_changed: usize,
    pub rules_deleted: usize,
    /// What prompted it: `start`, `files changed`, `canary`, `resync`, `SIGHUP`, `retry`.
    pub reason: String,
}

impl Applied {
    pub fn new(at: u64, s: &Summary, reason: &str) -> Applied {
        Applied {
            at,
            chains_added: s.chains_added,
            chains_changed: s.chains_changed,
            chains_deleted: s.chains_deleted,
            rules_added: s.rules_added,
            rules_changed: s.rules_changed,
            rules_deleted: s.rules_deleted,
            reason: reason.to_string(),
        }
    }

    /// Rule edits: what an operator counts as changes.
    pub fn changes(&self) -> usize {
        self.rules_added + self.rules_changed + self.rules_deleted
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub at: u64,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// When it first failed, and when last.
    pub since: u64,
    pub at: u64,
    pub message: String,
    pub attempts: u32,
    pub retry_at: u64,
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `3 s`, `5 min`, `2 h`, `4 d`: how long ago, for a person.
pub fn ago(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

/// `1 service`, `12 services`.
pub fn plural(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// A message on one line, cut to a length a status line can carry.
fn one_line(message: &str) -> String {
    const MAX: usize = 300;
    let line = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

impl State {
    /// The one-line summary for `STATUS=`: the problem first, if there is one, then the
    /// config in force and the last change, e.g. `12 services, 40 endpoints; applied 2
    /// changes 3 s ago`.
    pub fn status_line(&self, now: u64) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.config_error {
            let kept = if self.config.is_some() { "keeping the last good rules" } else { "nothing applied" };
            parts.push(format!("config error: {} ({kept})", one_line(&e.message)));
        }
        if let Some(f) = &self.apply_error {
            parts.push(format!(
                "applying failed {} ago ({} attempts): {}; retrying in {}",
                ago(f.since, now),
                f.attempts,
                one_line(&f.message),
                ago(now, f.retry_at)
            ));
        }
        match &self.config {
            Some(c) => parts.push(format!("{}, {}", plural(c.services, "service"), plural(c.endpoints, "endpoint"))),
            None => parts.push("no valid config loaded".to_string()),
        }
        if self.apply_error.is_none() && self.config.is_some() {
            match &self.last_apply {
                Some(a) => parts.push(format!("applied {} {} ago", plural(a.changes(), "change"), ago(a.at, now))),
                None => parts.push("rules in sync, nothing to change".to_string()),
            }
        }
        // A recent repair is news; an old one is in the log.
        if let Some(hit) = self.last_canary_hit.as_ref().filter(|h| now.saturating_sub(h.at) < 600) {
            parts.push(format!("restored after {} {} ago", one_line(&hit.message), ago(hit.at, now)));
        }
        parts.join("; ").replace('\n', " ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: cannot write the state file: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot read the daemon's state: {source}; is iptproxyd running (see --state-file)?", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: the daemon's state is not valid JSON: {source}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// Writes `state` to `path` atomically: a reader sees the old file or the new one, never
/// half of one (temporary file in the same directory, then rename).
pub fn write(path: &Path, state: &State) -> Result<(), StateError> {
    let err = |source| StateError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let json = serde_json::to_vec_pretty(state).map_err(|e| err(e.into()))?;
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&json)?;
        f.write_all(b"\n")
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

pub fn read(path: &Path) -> Result<State, StateError> {
    let text = std::fs::read(path).map_err(|source| StateError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&text).map_err(|source| StateError::Parse { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State { config: Some(Counts { services: 12, endpoints: 40, files: 3 }), in_sync: true, ..State::default() }
    }

    #[test]
    fn status_says_what_is_in_force_and_the_last_change() {
        let mut s = state();
        assert_eq!(s.status_line(100), "12 services, 40 endpoints; rules in sync, nothing to change");
        let summary = Summary { rules_added: 1, rules_deleted: 1, ..Summary::default() };
        s.last_apply = Some(Applied::new(97, &summary, "files changed"));
        assert_eq!(s.status_line(100), "12 services, 40 endpoints; applied 2 changes 3 s ago");
        assert_eq!(State::default().status_line(0), "no valid config loaded");
        s.config = Some(Counts { services: 1, endpoints: 1, files: 1 });
        s.last_apply = Some(Applied::new(97, &Summary { rules_added: 1, ..Summary::default() }, "start"));
        assert_eq!(s.status_line(100), "1 service, 1 endpoint; applied 1 change 3 s ago");
    }

    #[test]
    fn status_puts_the_problem_first() {
        let mut s = state();
        s.config_error = Some(Stamped { at: 5, message: "/etc/iptproxy/web.toml:5: bad port\nmore".into() });
        assert_eq!(
            s.status_line(10),
            "config error: /etc/iptproxy/web.toml:5: bad port; more (keeping the last good rules); \
             12 services, 40 endpoints; rules in sync, nothing to change"
        );
        s.config_error = None;
        s.apply_error = Some(Failure {
            since: 10,
            at: 14,
            message: "iptables-restore failed (exit status: 4): lock held".into(),
            attempts: 3,
            retry_at: 18,
        });
        assert_eq!(
            s.status_line(14),
            "applying failed 4 s ago (3 attempts): iptables-restore failed (exit status: 4): lock held; \
             retrying in 4 s; 12 services, 40 endpoints"
        );
    }

    #[test]
    fn ago_reads_naturally() {
        assert_eq!(ago(0, 59), "59 s");
        assert_eq!(ago(0, 61), "1 min");
        assert_eq!(ago(0, 7300), "2 h");
        assert_eq!(ago(0, 200_000), "2 d");
        assert_eq!(ago(10, 5), "0 s", "a clock step backwards is not negative");
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/iptproxy/state.json");
        let mut s = state();
        s.status = "ok".into();
        write(&path, &s).unwrap();
        assert_eq!(read(&path).unwrap(), s);
        s.status = "changed".into();
        write(&path, &s).unwrap();
        assert_eq!(read(&path).unwrap(), s);
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"], "no temporary file is left behind");
        let missing = read(&dir.path().join("none.json")).unwrap_err().to_string();
        assert!(missing.contains("is iptproxyd running"), "{missing}");
    }
}
