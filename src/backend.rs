//! Which iptables backend holds the host's rules: nf_tables or legacy.
//!
//! Writing to one while the host's rules live in the other is a classic outage: both sets
//! of hooks run, and neither tool shows the other's rules. Like kubernetes-sigs'
//! iptables-wrappers we look where rules are, preferring wherever iptproxy's own chains
//! already are, and only read: no probe here creates a table.

use std::fmt;

use crate::chains;
use crate::exec::{self, ExecError};
use crate::ruleset::Family;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    /// `iptables-nft-save`, `ip6tables-legacy-restore`, ...: `suffix` is `""`, `-save` or `-restore`.
    pub fn program(self, family: Family, suffix: &str) -> String {
        format!("{}-{self}{suffix}", family.tool())
    }

    /// The largest transaction worth writing. On nft one transaction's cost grows much
    /// faster than its size, so a large change is split. Legacy replaces the whole table
    /// at every commit, whatever its size: splitting only multiplies that cost (measured
    /// at 2,000 services x 10 endpoints: 10 transactions 2.81 s, one 0.79 s).
    pub fn max_lines(self) -> usize {
        match self {
            Backend::Nft => crate::restore::DEFAULT_MAX_LINES,
            Backend::Legacy => usize::MAX,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        })
    }
}

/// The backend to use and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub backend: Backend,
    pub reason: String,
}

/// Resolves `--backend`: an explicit choice is taken as is; `auto` looks at the host.
pub fn resolve(choice: Choice) -> Result<Detected, ExecError> {
    let given = |backend| Detected { backend, reason: "chosen with --backend".into() };
    match choice {
        Choice::Nft => Ok(given(Backend::Nft)),
        Choice::Legacy => Ok(given(Backend::Legacy)),
        Choice::Auto => detect(),
    }
}

/// What one backend's `-save` shows: how many rules, and whether any chain is ours.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub rules: usize,
    pub ours: bool,
}

impl Census {
    pub fn of(save_output: &str) -> Census {
        let mut c = Census::default();
        for line in save_output.lines() {
            // `-c` output puts `[packets:bytes] ` before a rule.
            let line = match line.strip_prefix('[') {
                Some(rest) => rest.split_once("] ").map_or(rest, |(_, rule)| rule),
                None => line,
            };
            if line.starts_with("-A ") {
                c.rules += 1;
            } else if line.starts_with(&format!(":{}", chains::PREFIX)) {
                c.ours = true;
            }
        }
        c
    }
}

/// The decision, given what each backend shows; `nft` is `None` until it is needed (a full
/// nft save pays for the whole ruleset, so it is read only when legacy has rules).
pub fn decide(legacy: Census, nft_ours: bool, nft: impl FnOnce() -> Census) -> Detected {
    let pick = |backend, reason: &str| Detected { backend, reason: reason.into() };
    if legacy.ours && !nft_ours {
        return pick(Backend::Legacy, "iptproxy's chains are in the legacy tables");
    }
    if nft_ours && !legacy.ours {
        return pick(Backend::Nft, "iptproxy's chains are in the nf_tables tables");
    }
    if legacy.rules == 0 {
        return pick(Backend::Nft, "no legacy rules on this host");
    }
    let nft = nft();
    if legacy.rules > nft.rules {
        pick(Backend::Legacy, &format!("{} legacy rules against {} nf_tables rules", legacy.rules, nft.rules))
    } else {
        pick(Backend::Nft, &format!("{} nf_tables rules against {} legacy rules", nft.rules, legacy.rules))
    }
}

fn detect() -> Result<Detected, ExecError> {
    let have = |b: Backend| exec::output(&b.program(Family::Ipv4, "-save"), &["--version"]).is_ok();
    match (have(Backend::Nft), have(Backend::Legacy)) {
        (true, false) => {
            return Ok(Detected { backend: Backend::Nft, reason: "only iptables-nft is installed".into() });
        }
        (false, true) => {
            return Ok(Detected { backend: Backend::Legacy, reason: "only iptables-legacy is installed".into() });
        }
        (false, false) => {
            return Err(ExecError::NotFound { program: "iptables-nft-save or iptables-legacy-save".into() });
        }
        (true, true) => {}
    }
    let legacy = census(Backend::Legacy);
    let nft_ours = Family::ALL.iter().any(|&family| {
        ["nat", "filter"].iter().any(|table| {
            let program = Backend::Nft.program(family, "");
            let args = ["-w", "5", "-t", table, "-S", chains::CANARY];
            exec::output(&program, &args).is_ok_and(|o| o.status.success())
        })
    });
    Ok(decide(legacy, nft_ours, || census(Backend::Nft)))
}

fn census(backend: Backend) -> Census {
    let mut total = Census::default();
    for family in Family::ALL {
        if let Ok(out) = exec::output(&backend.program(family, "-save"), &[]) {
            let c = Census::of(&String::from_utf8_lossy(&out.stdout));
            total.rules += c.rules;
            total.ours |= c.ours;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rules_and_spots_our_chains() {
        let out = "*nat\n:PREROUTING ACCEPT [0:0]\n:IPTPROXY-CANARY - [0:0]\n[1:2] -A PREROUTING -j X\n-A X\nCOMMIT\n";
        assert_eq!(Census::of(out), Census { rules: 2, ours: true });
        assert_eq!(Census::of(""), Census::default());
    }

    #[test]
    fn prefers_where_our_chains_are_then_where_rules_are() {
        let none = Census::default();
        let rules = |n| Census { rules: n, ours: false };
        let ours = Census { rules: 3, ours: true };
        let never = || panic!("nft need not be read");
        assert_eq!(decide(ours, false, never).backend, Backend::Legacy);
        assert_eq!(decide(rules(50), true, never).backend, Backend::Nft);
        assert_eq!(decide(none, false, never).backend, Backend::Nft);
        assert_eq!(decide(rules(10), false, || rules(3)).backend, Backend::Legacy);
        assert_eq!(decide(rules(10), false, || rules(30)).backend, Backend::Nft);
        assert_eq!(decide(ours, true, || rules(30)).backend, Backend::Nft);
    }
}
