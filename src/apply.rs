//! Carrying out edits: transactions of bounded size, split only where the kernel is left
//! consistent, every line checked before any runs, the UDP flows left pointing the wrong
//! way cleared after. A failure says which chain, service and line, and how many
//! transactions were committed before it.

use std::borrow::Cow;
use std::convert::Infallible;

use crate::conntrack;
use crate::edits::TableEdits;
use crate::exec::{ExecError, Runner};
use crate::plan::{ChainPlan, Plan, Summary};
use crate::reconcile::{RestoreFailure, SyncError};
use crate::render;
use crate::restore::{self, Script, Transactions, Unit};

/// Applies `plan` in transactions of at most about `max_lines` lines, then clears the UDP
/// flows it left pointing the wrong way.
pub fn plan(runner: &dyn Runner, plan: &Plan, max_lines: usize) -> Result<(), SyncError> {
    let all: Vec<TableEdits> = plan.tables.iter().map(TableEdits::from_plan).collect();
    edits(runner, &all, max_lines).map(|_| ())
}

/// Carries out `edits`, table by table, then clears the UDP flows they leave pointing the
/// wrong way; returns what changed. Every line is checked before anything runs, so a
/// refused one changes nothing. Transactions hold at most about `max_lines` lines, split
/// only between groups (see [`crate::edits`]), and only the one being filled is held; when
/// `max_lines` is unlimited (legacy, which replaces the whole table at every commit), each
/// table is one transaction, written to `iptables-restore` as it is produced.
pub fn edits(runner: &dyn Runner, edits: &[TableEdits], max_lines: usize) -> Result<Summary, SyncError> {
    let (summary, busy) = check(edits)?;
    let mut committed = 0;
    for t in edits.iter().zip(busy).filter_map(|(t, busy)| busy.then_some(t)) {
        if max_lines == usize::MAX {
            apply_streamed(runner, t, committed)?;
            committed += 1;
        } else {
            let mut transactions = Transactions::new(t.family, &t.table, max_lines)?;
            let mut run = |script: Script| {
                log::debug!("{} {} transaction:\n{}", script.family, script.table, script.text);
                match runner.restore(script.family, &script.text) {
                    Ok(()) => {
                        committed += 1;
                        Ok(())
                    }
                    Err(error) => {
                        let line = |n: usize| Some((script.line(n)?.to_string(), script.chains.get(n - 1)?.clone()));
                        Err(failure(t, line, committed, error))
                    }
                }
            };
            each_group(t, &mut |units, _| transactions.push(units).map_or(Ok(()), &mut run))?;
            if let Some(script) = transactions.finish() {
                run(script)?;
            }
        }
    }
    let mut stale = Vec::new();
    for t in edits {
        conntrack::stale_in(t.family, &t.table, t.first.iter().chain(&t.then), &mut stale);
        stale_deletions(t, &mut stale);
    }
    forget_stale_flows(runner, &stale);
    Ok(summary)
}

/// The transactions [`edits`] would run, as text: what `iptproxy plan --script` prints.
pub fn scripts(edits: &[TableEdits], max_lines: usize) -> Result<Vec<Script>, SyncError> {
    let mut out = Vec::new();
    let (_, busy) = check(edits)?;
    for (t, busy) in edits.iter().zip(busy) {
        if max_lines == usize::MAX {
            // One transaction, exactly as it is streamed.
            if busy {
                out.push(restore::streamed(t.family, &t.table, &all_units(t)));
            }
            continue;
        }
        let mut transactions = Transactions::new(t.family, &t.table, max_lines)?;
        each_group(t, &mut |units, _| {
            out.extend(transactions.push(units));
            Ok::<(), SyncError>(())
        })?;
        out.extend(transactions.finish());
    }
    Ok(out)
}

/// Checks every line of `edits` (see [`Unit::check`]) before any is written; returns what
/// they change and, for each table, whether it has anything to write.
fn check(edits: &[TableEdits]) -> Result<(Summary, Vec<bool>), SyncError> {
    let mut summary = Summary::default();
    let mut busy = Vec::with_capacity(edits.len());
    for t in edits {
        let mut any = false;
        each_group(t, &mut |units, chains| {
            for unit in &units {
                unit.check(t.family, &t.table)?;
            }
            chains.iter().for_each(|c| summary.add(c));
            any = true;
            Ok::<(), SyncError>(())
        })?;
        busy.push(any);
    }
    Ok((summary, busy))
}

/// A table's units, produced afresh at each call (see [`restore::Units`]).
fn all_units<'t>(t: &'t TableEdits) -> impl Fn(&mut dyn FnMut(Unit)) + 't {
    move |sink| {
        let all = each_group(t, &mut |units, _| {
            units.into_iter().for_each(&mut *sink);
            Ok::<(), Infallible>(())
        });
        match all {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }
}

fn stale_deletions(t: &TableEdits, stale: &mut Vec<conntrack::Stale>) {
    for c in t.deletions() {
        conntrack::stale_in(t.family, &t.table, std::iter::once(c.as_ref()), stale);
    }
}

/// One table's edits as one transaction, streamed to the tool.
fn apply_streamed(runner: &dyn Runner, t: &TableEdits, committed: usize) -> Result<(), SyncError> {
    let units = all_units(t);
    let written = runner.restore_lines(t.family, &mut |out| restore::stream(&t.table, &units, &mut |l, _| out(l)));
    written.map_err(|error| {
        // Written again, up to the line the tool names, to say which it was.
        let line = |n: usize| {
            let mut found = None;
            let mut at = 0;
            restore::stream(&t.table, &units, &mut |l, chain| {
                at += 1;
                if at == n {
                    found = Some((l.to_string(), chain.map(str::to_string)));
                }
            });
            found
        };
        failure(t, line, committed, error)
    })
}

/// Takes a group of units, with the changes they carry out.
type EachGroup<'f, E> = dyn FnMut(Vec<Unit>, &[Cow<ChainPlan>]) -> Result<(), E> + 'f;

/// Every unit of `t`, a group at a time, with the changes they carry out: the creations
/// and updates, then every deleted chain flushed, then every one deleted (they may jump
/// to each other).
fn each_group<E>(t: &TableEdits, f: &mut EachGroup<'_, E>) -> Result<(), E> {
    for group in t.groups() {
        f(group.iter().map(|c| Unit::edit(c)).collect(), &group)?;
    }
    for c in t.deletions() {
        f(vec![Unit::flush(&c.chain)], std::slice::from_ref(&c))?;
    }
    for c in t.deletions() {
        f(vec![Unit::delete(&c.chain)], &[])?;
    }
    Ok(())
}

/// Best effort: the rules are right whatever happens here, so a failure is a warning.
fn forget_stale_flows(runner: &dyn Runner, stale: &[conntrack::Stale]) {
    static MISSING_WARNED: std::sync::Once = std::sync::Once::new();
    for stale in stale {
        match runner.forget_flows(stale.family, &stale.filter) {
            Ok(()) => log::debug!("cleared {} conntrack entries: {}", stale.family, stale.filter.join(" ")),
            Err(ExecError::NotFound { .. }) => MISSING_WARNED.call_once(|| {
                log::warn!("conntrack is not installed: UDP flows to removed endpoints go on until they time out")
            }),
            Err(e) => log::warn!("clearing stale UDP flows ({}): {e}", stale.filter.join(" ")),
        }
    }
}

/// What went wrong in a transaction of `t`: `line` gives the text of input line `n` and the
/// chain it edits.
fn failure(
    t: &TableEdits,
    line: impl Fn(usize) -> Option<(String, Option<String>)>,
    committed: usize,
    error: ExecError,
) -> SyncError {
    let n = match &error {
        ExecError::Failed { stderr, .. } => failed_line(stderr),
        _ => None,
    };
    let (line, chain) = n.and_then(line).map_or((None, None), |(l, c)| (Some(l), c));
    let service = line.as_deref().and_then(render::service_of).or_else(|| {
        let chain = chain.as_deref()?;
        t.groups().flatten().chain(t.deletions()).find(|c| c.chain == chain).and_then(|c| c.service())
    });
    let (family, table) = (t.family, t.table.clone());
    SyncError::Restore(Box::new(RestoreFailure { family, table, chain, service, line, committed, error }))
}

/// The input line `iptables-restore` complains about: it says `line 5 failed` (legacy) or
/// `Error occurred at line: 5` (nft).
pub fn failed_line(stderr: &str) -> Option<usize> {
    let at = stderr.find("line")? + "line".len();
    let digits: String = stderr[at..].trim_start_matches([':', ' ']).chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests;
