//! One reconcile pass, at the edge: read the live rules, plan, apply.

use crate::conntrack;
use crate::exec::{ExecError, Runner};
use crate::plan::{ChainPlan, Plan};
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
    #[error("{0}")]
    Restore(Box<RestoreFailure>),
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

/// Applies `plan` in transactions of at most about `max_lines` lines, then clears the UDP
/// flows it left pointing the wrong way.
pub fn apply(runner: &dyn Runner, plan: &Plan, max_lines: usize) -> Result<(), SyncError> {
    for (i, script) in restore::scripts(plan, max_lines).iter().enumerate() {
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
