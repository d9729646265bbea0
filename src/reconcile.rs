//! One reconcile pass, at the edge: read the live rules, plan, apply.

use crate::chains;
use crate::conntrack;
use crate::exec::{ExecError, Runner};
use crate::plan::{self, Action, ChainPlan, Op, Plan};
use crate::render;
use crate::restore::{self, Script};
use crate::ruleset::{Family, Ruleset};
use crate::save::{self, SaveError};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Save(#[from] SaveError),
    #[error(transparent)]
    Script(#[from] restore::ScriptError),
    #[error("{0}")]
    Restore(Box<RestoreFailure>),
    #[error(
        "another program kept changing iptproxy's chains ({}) while they were being applied, \
         {rounds} times in a row; every transaction left a consistent state, but not the configured one. \
         Find that program and stop it, then run again",
        chains.join(", ")
    )]
    KeptChanging { chains: Vec<String>, rounds: usize },
}

/// A chain of ours that, read back after an apply, is not what the plan made it.
#[derive(Debug)]
pub struct Drift {
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// Why it could not be read back, if it could not.
    pub error: Option<ExecError>,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.chain)
    }
}

/// What [`converge`] did.
#[derive(Debug)]
pub struct Converged {
    /// The live rules before anything was applied.
    pub before: Ruleset,
    /// The plans applied, in order: none when nothing needed to change, more than one when
    /// another program changed our chains under the first.
    pub applied: Vec<Plan>,
}

/// What a failed `iptables-restore` was doing, for a message an operator can act on.
#[derive(Debug)]
pub struct RestoreFailure {
    pub family: Family,
    pub table: String,
    pub chain: Option<String>,
    pub service: Option<String>,
    /// The failing input line, when the tool named one.
    pub line: Option<String>,
    /// How many transactions of the plan were committed before this one.
    pub committed: usize,
    pub error: ExecError,
}

impl std::fmt::Display for RestoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "applying to the {} {} table failed", self.family, self.table)?;
        if let Some(chain) = &self.chain {
            write!(f, " at chain {chain}")?;
        }
        if let Some(service) = &self.service {
            write!(f, " (service {service})")?;
        }
        if let Some(line) = &self.line {
            write!(f, "\n  rule: {line}")?;
        }
        write!(f, "\n  {}", self.error)?;
        match self.committed {
            0 => write!(f, "\n  nothing was changed: the table's transaction was rolled back"),
            n => {
                write!(f, "\n  {n} earlier transaction(s) were committed; the rules are consistent but not all changed")
            }
        }
    }
}

/// Reads the live rules of every family. A family that cannot be read is an error only
/// when `needed` says the config uses it; otherwise (no ip6tables, IPv6 disabled) it is
/// skipped with a warning.
pub fn read_live(runner: &dyn Runner, needed: impl Fn(Family) -> bool) -> Result<Ruleset, SyncError> {
    let mut tables = Vec::new();
    for family in Family::ALL {
        match read_family(runner, family, false) {
            Ok(t) => tables.extend(t),
            Err(e) if !needed(family) => log::warn!("skipping {family}: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(Ruleset { tables })
}

/// Reads one family's rules, with counters when asked.
pub fn read_family(
    runner: &dyn Runner,
    family: Family,
    counters: bool,
) -> Result<Vec<crate::ruleset::Table>, SyncError> {
    let mut parser = save::Parser::new(family);
    let mut first_error = None;
    runner.save(family, counters, &mut |line| {
        if first_error.is_none() {
            first_error = parser.line(line).err();
        }
    })?;
    if let Some(e) = first_error {
        return Err(e.into());
    }
    for w in &parser.warnings {
        log::warn!("{}-save: {w}", family.tool());
    }
    Ok(parser.finish()?)
}

/// Makes the live rules equal to `desired`, as `iptproxy apply` does: read, plan, apply,
/// then [`verify`]. Another program may change our chains between the read and the write
/// (nothing locks across the two; iptables-nft takes no lock at all), and then an edit by
/// position lands on the wrong rule. When the read-back shows that, the rules are read
/// afresh and planned again, up to `rounds` passes in all.
pub fn converge(
    runner: &dyn Runner,
    desired: &Ruleset,
    max_lines: usize,
    rounds: usize,
) -> Result<Converged, SyncError> {
    let needed = |f| desired.family(f).next().is_some();
    let before = read_live(runner, needed)?;
    // Read again only after a drift; `before` is not copied (it can be large).
    let mut fresh: Option<Ruleset> = None;
    let mut applied = Vec::new();
    let mut drifted = Vec::new();
    for round in 1..=rounds.max(1) {
        let plan = plan::plan(desired, fresh.as_ref().unwrap_or(&before));
        if plan.is_empty() {
            return Ok(Converged { before, applied });
        }
        apply(runner, &plan, max_lines)?;
        drifted = verify(runner, &plan);
        applied.push(plan);
        if drifted.is_empty() {
            return Ok(Converged { before, applied });
        }
        for d in &drifted {
            let why = d.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
            log::warn!(
                "another program changed {d} while iptproxy applied its plan{why}; planning again (pass {round})"
            );
        }
        fresh = Some(read_live(runner, needed)?);
    }
    Err(SyncError::KeptChanging { chains: drifted.iter().map(|d| d.to_string()).collect(), rounds })
}

/// Reads back each of our chains that `plan` edited by position, and returns those that
/// differ from what the plan meant. Positions are where a concurrent writer can make an
/// edit land on the wrong rule; a chain created whole, or edited only by text, cannot be
/// misplaced. One cheap `iptables -S CHAIN` per chain, so a small change costs little.
pub fn verify(runner: &dyn Runner, plan: &Plan) -> Vec<Drift> {
    let mut drifted = Vec::new();
    for t in &plan.tables {
        for c in &t.chains {
            let positional =
                c.ops.iter().any(|op| matches!(op, Op::Insert { .. } | Op::Replace { .. } | Op::Delete { .. }));
            if c.action != Action::Update || !chains::is_ours(&c.chain) || !positional {
                continue;
            }
            let drift = |error| Drift { family: t.family, table: t.table.clone(), chain: c.chain.clone(), error };
            match runner.list_chain(t.family, &t.table, &c.chain) {
                Ok(None) => drifted.push(drift(None)),
                Ok(Some(live)) => {
                    let same = live.len() == c.after.len()
                        && live
                            .iter()
                            .zip(&c.after)
                            .all(|(l, a)| crate::spec::canonical(l) == crate::spec::canonical(a));
                    if !same {
                        drifted.push(drift(None));
                    }
                }
                Err(e) => drifted.push(drift(Some(e))),
            }
        }
    }
    drifted
}

/// Applies `plan` in transactions of at most about `max_lines` lines, then clears the UDP
/// flows it left pointing the wrong way.
pub fn apply(runner: &dyn Runner, plan: &Plan, max_lines: usize) -> Result<(), SyncError> {
    for (i, script) in restore::scripts(plan, max_lines)?.iter().enumerate() {
        log::debug!("{} {} transaction:\n{}", script.family, script.table, script.text);
        if let Err(error) = runner.restore(script.family, &script.text) {
            return Err(SyncError::Restore(Box::new(describe_failure(plan, script, i, error))));
        }
    }
    forget_stale_flows(runner, plan);
    Ok(())
}

/// Best effort: the rules are right whatever happens here, so a failure is a warning.
fn forget_stale_flows(runner: &dyn Runner, plan: &Plan) {
    static MISSING_WARNED: std::sync::Once = std::sync::Once::new();
    for stale in conntrack::stale(plan) {
        match runner.forget_flows(stale.family, &stale.filter) {
            Ok(()) => log::debug!("cleared {} conntrack entries: {}", stale.family, stale.filter.join(" ")),
            Err(ExecError::NotFound { .. }) => MISSING_WARNED.call_once(|| {
                log::warn!("conntrack is not installed: UDP flows to removed endpoints go on until they time out")
            }),
            Err(e) => log::warn!("clearing stale UDP flows ({}): {e}", stale.filter.join(" ")),
        }
    }
}

fn describe_failure(plan: &Plan, script: &Script, committed: usize, error: ExecError) -> RestoreFailure {
    let n = match &error {
        ExecError::Failed { stderr, .. } => failed_line(stderr),
        _ => None,
    };
    let chain = n.and_then(|n| script.chains.get(n.checked_sub(1)?).cloned().flatten());
    let line = n.and_then(|n| script.line(n)).map(str::to_string);
    let chain_plan = chain.as_deref().and_then(|c| {
        plan.tables
            .iter()
            .filter(|t| t.family == script.family && t.table == script.table)
            .flat_map(|t| &t.chains)
            .find(|p| p.chain == c)
    });
    let service = line.as_deref().and_then(render::service_of).or_else(|| chain_plan.and_then(ChainPlan::service));
    RestoreFailure { family: script.family, table: script.table.clone(), chain, service, line, committed, error }
}

/// The input line `iptables-restore` complains about: it says `line 5 failed` (legacy) or
/// `Error occurred at line: 5` (nft).
pub fn failed_line(stderr: &str) -> Option<usize> {
    let at = stderr.find("line")? + "line".len();
    let digits: String = stderr[at..].trim_start_matches([':', ' ']).chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_failing_line_in_both_backends_messages() {
        assert_eq!(failed_line("iptables-restore: line 5 failed"), Some(5));
        assert_eq!(
            failed_line(
                "iptables-restore v1.8.9 (nf_tables): Chain 'X' does not exist\nError occurred at line: 12\nTry `iptables-restore -h'"
            ),
            Some(12)
        );
        assert_eq!(failed_line("Another app is currently holding the xtables lock"), None);
    }
}
