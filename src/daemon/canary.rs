//! Canary chains: a cheap way to notice that someone wiped our rules.
//!
//! Every table iptproxy manages holds `IPTPROXY-CANARY` with one inert rule. A flush
//! (`iptables -t nat -F`) empties it but leaves it standing; a firewall reload (`-F` then
//! `-X`) or `nft flush ruleset` deletes it. Either way the whole ruleset is re-applied.
//! Listing one chain costs a process spawn whatever the ruleset's size, unlike a full
//! `iptables-save`. Every table is checked: a flush of nat alone is as bad as any.

use std::fmt;

use crate::chains::{CANARY, CANARY_RULE};
use crate::exec::{ExecError, Runner};
use crate::ruleset::Family;
use crate::spec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// The chain and its rule are there.
    Intact,
    /// The chain is there but its rule is not: the table was flushed.
    Flushed,
    /// The chain is gone: chains were deleted, or the whole table.
    Deleted,
}

/// What was found wrong in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub family: Family,
    pub table: String,
    pub sign: Sign,
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.sign {
            Sign::Intact => "intact",
            Sign::Flushed => "flushed",
            Sign::Deleted => "wiped (chains deleted)",
        };
        write!(f, "the {} {} table was {what}", self.family, self.table)
    }
}

/// What the canary chain's rules say about its table.
pub fn read_sign(rules: Option<&[String]>) -> Sign {
    match rules {
        None => Sign::Deleted,
        Some(rules) if rules.iter().any(|r| spec::canonical(r) == spec::canonical(CANARY_RULE)) => Sign::Intact,
        Some(_) => Sign::Flushed,
    }
}

/// Checks the canary of every table in `tables`. A table that cannot be checked (the lock
/// is held, iptables is gone) is reported as an error, not as a hit.
pub fn check(runner: &dyn Runner, tables: &[(Family, &str)]) -> (Vec<Hit>, Vec<(String, ExecError)>) {
    let mut hits = Vec::new();
    let mut errors = Vec::new();
    for (family, table) in tables {
        match runner.list_chain(*family, table, CANARY) {
            Ok(rules) => match read_sign(rules.as_deref()) {
                Sign::Intact => {}
                sign => hits.push(Hit { family: *family, table: table.to_string(), sign }),
            },
            Err(e) => errors.push((format!("{family} {table}"), e)),
        }
    }
    (hits, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_a_flush_from_a_deletion_from_an_intact_table() {
        let intact = vec![CANARY_RULE.to_string()];
        assert_eq!(read_sign(Some(&intact)), Sign::Intact);
        let bare_quoted = vec!["-m comment --comment \"iptproxy canary\" -j RETURN".to_string()];
        assert_eq!(read_sign(Some(&bare_quoted)), Sign::Intact);
        assert_eq!(read_sign(Some(&[])), Sign::Flushed);
        assert_eq!(read_sign(Some(&["-j RETURN".to_string()])), Sign::Flushed);
        assert_eq!(read_sign(None), Sign::Deleted);
    }

    #[test]
    fn a_hit_names_family_and_table() {
        let hit = Hit { family: Family::Ipv6, table: "nat".into(), sign: Sign::Flushed };
        assert_eq!(hit.to_string(), "the IPv6 nat table was flushed");
        let hit = Hit { family: Family::Ipv4, table: "filter".into(), sign: Sign::Deleted };
        assert_eq!(hit.to_string(), "the IPv4 filter table was wiped (chains deleted)");
    }
}
