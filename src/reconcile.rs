//! One reconcile pass, at the edge: read the live rules, plan, apply (see [`apply`]), read
//! back what another program could have disturbed, and again if it did.

use std::borrow::Cow;

use crate::apply;
use crate::chains;
use crate::compare;
use crate::config::Config;
use crate::edits::TableEdits;
use crate::exec::{ExecError, Runner};
use crate::plan::{self, Action, ChainPlan, Op, Summary};
use crate::restore;
use crate::ruleset::{Family, Ruleset};
use crate::save::{self, SaveError};
use crate::spec;

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
    #[error("{} did not read back as applied: another program changed it since iptproxy last read the rules", chains.join(", "))]
    NotAsApplied { chains: Vec<String> },
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

/// Reads the live rules of every family (see [`each_family`]).
pub fn read_live(runner: &dyn Runner, needed: impl Fn(Family) -> bool) -> Result<Ruleset, SyncError> {
    let tables = each_family(needed, |family| read_family(runner, family, false))?;
    Ok(Ruleset { tables })
}

/// Runs `read` for every family and gathers what it returns. A family that cannot be read
/// is an error only when `needed` says the config uses it; otherwise (no ip6tables, IPv6
/// disabled) it is skipped with a warning.
pub fn each_family<T>(
    needed: impl Fn(Family) -> bool,
    mut read: impl FnMut(Family) -> Result<Vec<T>, SyncError>,
) -> Result<Vec<T>, SyncError> {
    let mut all = Vec::new();
    for family in Family::ALL {
        match read(family) {
            Ok(found) => all.extend(found),
            Err(e) if !needed(family) => log::warn!("skipping {family}: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

/// Feeds one family's `iptables-save` output (with counters when asked) to `line`, a line
/// at a time; the first line it refuses is the error, once the tool is done.
pub fn feed_save(
    runner: &dyn Runner,
    family: Family,
    counters: bool,
    line: &mut dyn FnMut(&str) -> Result<(), SaveError>,
) -> Result<(), SyncError> {
    let mut first_error = None;
    runner.save(family, counters, &mut |l| {
        if first_error.is_none() {
            first_error = line(l).err();
        }
    })?;
    first_error.map_or(Ok(()), |e| Err(e.into()))
}

/// Logs the `# Warning: ...` lines a family's `iptables-save` printed.
pub fn log_warnings(family: Family, warnings: &[String]) {
    for w in warnings {
        log::warn!("{}-save: {w}", family.tool());
    }
}

/// Reads one family's rules, with counters when asked.
pub fn read_family(
    runner: &dyn Runner,
    family: Family,
    counters: bool,
) -> Result<Vec<crate::ruleset::Table>, SyncError> {
    let mut parser = save::Parser::new(family);
    feed_save(runner, family, counters, &mut |line| parser.line(line))?;
    log_warnings(family, &parser.warnings);
    Ok(parser.finish()?)
}

/// What [`sync`] or [`converge`] did: what each pass changed, none when nothing needed to
/// change, more than one when another program changed our chains under the first.
#[derive(Debug, Default)]
pub struct Synced {
    pub applied: Vec<Summary>,
}

/// Makes the live rules equal to what `config` makes, as `iptproxy apply` and the daemon's
/// full syncs do: compares them as `iptables-save` streams them (see [`compare`]), and
/// carries out the differences (see [`passes`]). Holds neither the live ruleset nor the
/// whole plan.
pub fn sync(runner: &dyn Runner, config: &Config, max_lines: usize, rounds: usize) -> Result<Synced, SyncError> {
    passes(runner, max_lines, rounds, || compare::read(runner, config))
}

/// Makes the live rules equal to the ruleset `desired` (what `apply --confirm` puts back):
/// reads them whole, plans (see [`plan::plan`]) and carries out the plan (see [`passes`]).
pub fn converge(runner: &dyn Runner, desired: &Ruleset, max_lines: usize, rounds: usize) -> Result<Synced, SyncError> {
    let needed = |f| desired.family(f).next().is_some();
    passes(runner, max_lines, rounds, || {
        let plan = plan::plan(desired, &read_live(runner, needed)?);
        Ok(plan.tables.iter().map(TableEdits::from_plan).collect())
    })
}

/// Carries out what `read` finds to change, in bounded transactions, then reads back the
/// chains edited by position (see [`verify_edits`]). Another program may change our chains
/// between the read and the write (nothing locks across the two; iptables-nft takes no lock
/// at all), and then an edit by position lands on the wrong rule: when the read-back shows
/// that, `read` runs again, up to `rounds` passes in all.
fn passes<'a>(
    runner: &dyn Runner,
    max_lines: usize,
    rounds: usize,
    mut read: impl FnMut() -> Result<Vec<TableEdits<'a>>, SyncError>,
) -> Result<Synced, SyncError> {
    let mut done = Synced::default();
    let mut drifted = Vec::new();
    for round in 1..=rounds.max(1) {
        let (summary, drift) = apply_checked(runner, &read()?, max_lines)?;
        if summary == Summary::default() {
            return Ok(done);
        }
        done.applied.push(summary);
        drifted = drift;
        if drifted.is_empty() {
            return Ok(done);
        }
        warn_drift(&drifted, round);
    }
    Err(SyncError::KeptChanging { chains: drifted.iter().map(|d| d.to_string()).collect(), rounds })
}

/// Carries out `edits` (see [`apply::edits`]), then reads back the chains they edited by
/// position (see [`verify_edits`]): what changed, and the chains not as meant.
pub fn apply_checked(
    runner: &dyn Runner,
    edits: &[TableEdits],
    max_lines: usize,
) -> Result<(Summary, Vec<Drift>), SyncError> {
    let summary = apply::edits(runner, edits, max_lines)?;
    Ok((summary, verify_edits(runner, edits)))
}

fn warn_drift(drifted: &[Drift], round: usize) {
    for d in drifted {
        let why = d.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
        log::warn!("another program changed {d} while iptproxy applied its plan{why}; planning again (pass {round})");
    }
}

/// Reads back each of our chains that `edits` update by position, and returns those that
/// differ from what was meant. Positions are where a concurrent writer can make an edit
/// land on the wrong rule; a chain created whole, or edited only by text, cannot be
/// misplaced. One cheap `iptables -S CHAIN` per chain, so a small change costs little.
pub fn verify_edits(runner: &dyn Runner, edits: &[TableEdits]) -> Vec<Drift> {
    let mut drifted = Vec::new();
    for t in edits {
        let fixed = t.first.iter().chain(&t.then).map(Cow::Borrowed);
        verify_chains(runner, t.family, &t.table, fixed.chain(t.services.updates()), &mut drifted);
    }
    drifted
}

fn verify_chains(
    runner: &dyn Runner,
    family: Family,
    table: &str,
    chains: impl Iterator<Item = impl std::ops::Deref<Target = ChainPlan>>,
    drifted: &mut Vec<Drift>,
) {
    for c in chains {
        let c = &*c;
        let positional =
            c.ops.iter().any(|op| matches!(op, Op::Insert { .. } | Op::Replace { .. } | Op::Delete { .. }));
        // A shared chain spliced from the record (see `incremental`) is never rendered
        // whole: it has edits but neither a before nor an after to compare with.
        let whole = !(c.before.is_empty() && c.after.is_empty());
        if c.action != Action::Update || !chains::is_ours(&c.chain) || !positional || !whole {
            continue;
        }
        let drift = |error| Drift { family, table: table.to_string(), chain: c.chain.clone(), error };
        match runner.list_chain(family, table, &c.chain) {
            Ok(None) => drifted.push(drift(None)),
            Ok(Some(live)) => {
                let same = live.len() == c.after.len()
                    && live.iter().zip(&c.after).all(|(l, a)| l == a || spec::canonical(l) == spec::canonical(a));
                if !same {
                    drifted.push(drift(None));
                }
            }
            Err(e) => drifted.push(drift(Some(e))),
        }
    }
}
