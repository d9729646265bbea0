//! A [`Runner`] that wraps another and injects faults, for tests of what iptproxy does
//! when iptables misbehaves: a transaction the tool refuses, another program changing the
//! rules between our read and our write, garbage or a warning from `iptables-save`,
//! missing binaries. The binaries never use it.
//!
//! Faults go through the real tool where they can: a failing restore feeds the real
//! `iptables-restore` its transaction with one line it must refuse, so the kernel's own
//! rollback is what is tested.

use std::sync::Mutex;

use super::{ExecError, Runner};
use crate::ruleset::Family;

/// Another program's change to the rules, run at a chosen moment.
pub type Writer = Box<dyn FnMut() + Send>;

pub enum Fault {
    /// The `nth` restore from now (1 = the next) is refused by the tool and rolled back.
    RestoreFails { nth: usize },
    /// `writer` runs just before the `nth` restore from now.
    WriterBeforeRestore { nth: usize, writer: Writer },
    /// Every save prints `text` instead of the tool's output.
    SaveOutput(String),
    /// The binaries are not installed: every call fails as a missing program does.
    Missing,
}

/// The line appended to a transaction that must fail: a rule for a chain that cannot exist.
pub const POISON: &str = "-A IPTPROXY-FAULT-NO-SUCH-CHAIN -j ACCEPT";

pub struct Faulty<R> {
    inner: R,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Restores run through this runner (successful or not) since it was made.
    restores: usize,
    /// Faults with the restore count they are due at.
    faults: Vec<(usize, Fault)>,
}

impl<R: Runner> Faulty<R> {
    pub fn new(inner: R) -> Faulty<R> {
        Faulty { inner, state: Mutex::default() }
    }

    /// Arms a fault; restore-counted faults count from now.
    pub fn inject(&self, fault: Fault) {
        let mut s = self.lock();
        let due = match &fault {
            Fault::RestoreFails { nth } | Fault::WriterBeforeRestore { nth, .. } => s.restores + nth,
            _ => 0,
        };
        s.faults.push((due, fault));
    }

    /// Clears every fault: iptables works again.
    pub fn clear(&self) {
        self.lock().faults.clear();
    }

    /// How many restores were attempted through this runner.
    pub fn restores(&self) -> usize {
        self.lock().restores
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding it leaves nothing half-changed in `State`.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn missing(&self, family: Family, suffix: &str) -> Option<ExecError> {
        let s = self.lock();
        s.faults
            .iter()
            .any(|(_, f)| matches!(f, Fault::Missing))
            .then(|| ExecError::NotFound { program: format!("{}{suffix}", family.tool()) })
    }
}

impl<R: Runner> Runner for Faulty<R> {
    fn save(&self, family: Family, counters: bool, line: &mut dyn FnMut(&str)) -> Result<(), ExecError> {
        if let Some(e) = self.missing(family, "-save") {
            return Err(e);
        }
        let replaced = self.lock().faults.iter().find_map(|(_, f)| match f {
            Fault::SaveOutput(text) => Some(text.clone()),
            _ => None,
        });
        match replaced {
            Some(text) => {
                text.lines().for_each(line);
                Ok(())
            }
            None => self.inner.save(family, counters, line),
        }
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), ExecError> {
        if let Some(e) = self.missing(family, "-restore") {
            return Err(e);
        }
        let (fails, writers) = {
            let mut s = self.lock();
            s.restores += 1;
            let now = s.restores;
            let fails = s.faults.iter().any(|(due, f)| *due == now && matches!(f, Fault::RestoreFails { .. }));
            let mut writers = Vec::new();
            let mut kept = Vec::new();
            for (due, f) in s.faults.drain(..) {
                match f {
                    Fault::WriterBeforeRestore { writer, .. } if due == now => writers.push(writer),
                    other => kept.push((due, other)),
                }
            }
            s.faults = kept;
            (fails, writers)
        };
        for mut writer in writers {
            writer();
        }
        if !fails {
            return self.inner.restore(family, input);
        }
        let poisoned = match input.strip_suffix("COMMIT\n") {
            Some(body) => format!("{body}{POISON}\nCOMMIT\n"),
            None => format!("{input}{POISON}\n"),
        };
        self.inner.restore(family, &poisoned)
    }

    fn describe(&self) -> String {
        format!("{} (with faults)", self.inner.describe())
    }

    fn list_chain(&self, family: Family, table: &str, chain: &str) -> Result<Option<Vec<String>>, ExecError> {
        if let Some(e) = self.missing(family, "") {
            return Err(e);
        }
        self.inner.list_chain(family, table, chain)
    }

    fn forget_flows(&self, family: Family, filter: &[String]) -> Result<(), ExecError> {
        self.inner.forget_flows(family, filter)
    }
}
