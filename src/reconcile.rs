//! One reconcile pass, at the edge: read the live rules, plan, apply (see [`apply`]), read
//! back what another program could have disturbed, and again if it did.

use std::borrow::Cow;

use crate::apply;
use crate::chains;
use crate::compare;
use crate::config::Config;
use crate::edits::TableEdits;
use crate::exec::{ExecError, Runner};
use crate::plan::{self, Action, ChainPlan, Op, Plan, Summary};
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
        apply::plan(runner, &plan, max_lines)?;
        drifted = verify(runner, &plan);
        applied.push(plan);
        if drifted.is_empty() {
            return Ok(Converged { before, applied });
        }
        warn_drift(&drifted, round);
        fresh = Some(read_live(runner, needed)?);
    }
    Err(SyncError::KeptChanging { chains: drifted.iter().map(|d| d.to_string()).collect(), rounds })
}

/// What [`sync`] did: what each pass changed, none when nothing needed to change, more
/// than one when another program changed our chains under the first.
#[derive(Debug, Default)]
pub struct Synced {
    pub applied: Vec<Summary>,
}

/// Makes the live rules equal to what `config` makes, as `iptproxy apply` and the daemon's
/// full syncs do: compares them as `iptables-save` streams them (see [`compare`]),
/// carries out the differences in bounded transactions, then reads back the chains edited
/// by position; if another program changed one under it, reads and plans again, up to
/// `rounds` passes in all. Holds neither the live ruleset nor the whole plan.
pub fn sync(runner: &dyn Runner, config: &Config, max_lines: usize, rounds: usize) -> Result<Synced, SyncError> {
    let mut done = Synced::default();
    let mut drifted = Vec::new();
    for round in 1..=rounds.max(1) {
        let edits = compare::read(runner, config)?;
        let summary = apply::edits(runner, &edits, max_lines)?;
        if summary == Summary::default() {
            return Ok(done);
        }
        done.applied.push(summary);
        drifted = verify_edits(runner, &edits);
        if drifted.is_empty() {
            return Ok(done);
        }
        warn_drift(&drifted, round);
    }
    Err(SyncError::KeptChanging { chains: drifted.iter().map(|d| d.to_string()).collect(), rounds })
}

fn warn_drift(drifted: &[Drift], round: usize) {
    for d in drifted {
        let why = d.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
        log::warn!("another program changed {d} while iptproxy applied its plan{why}; planning again (pass {round})");
    }
}

/// Reads back each of our chains that `plan` edited by position, and returns those that
/// differ from what the plan meant. Positions are where a concurrent writer can make an
/// edit land on the wrong rule; a chain created whole, or edited only by text, cannot be
/// misplaced. One cheap `iptables -S CHAIN` per chain, so a small change costs little.
pub fn verify(runner: &dyn Runner, plan: &Plan) -> Vec<Drift> {
    let mut drifted = Vec::new();
    for t in &plan.tables {
        verify_chains(runner, t.family, &t.table, t.chains.iter(), &mut drifted);
    }
    drifted
}

/// [`verify`] for edits: the chains they update by position.
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
