//! The live rules against a config, compared while `iptables-save` streams them.
//!
//! Each of our chains is compared when its lines end, with its desired version rendered
//! on demand (found by name in an [`Index`] of the chains the config makes), and then its
//! text is dropped. What is held is the config, that index, the built-in chains, the
//! shared chains and the differences. A desired chain that is missing is not held at all:
//! it is rendered when the edits are written (see [`crate::edits`]). So a first sync or a
//! resync at any size needs little more memory than the config itself.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::chains;
use crate::config::{Config, Service, Settings};
use crate::edits::{Services, TableEdits};
use crate::exec::Runner;
use crate::plan::{self, ChainPlan};
use crate::reconcile::{self, SyncError};
use crate::render::{self, Frame, Which, service};
use crate::ruleset::Family;
use crate::save::{Lexer, Line, SaveError};

/// Reads every family's live rules and compares them with `config`. A family that cannot
/// be read is an error only when the config has services in it; otherwise (no ip6tables,
/// IPv6 disabled) it is skipped with a warning.
pub fn read<'a>(runner: &dyn Runner, config: &'a Config) -> Result<Vec<TableEdits<'a>>, SyncError> {
    let needed = |family| config.services.iter().any(|s| s.family() == family);
    reconcile::each_family(needed, |family| {
        let mut comparer = Comparer::new(config, family);
        reconcile::feed_save(runner, family, false, &mut |line| comparer.line(line))?;
        reconcile::log_warnings(family, &comparer.warnings);
        Ok(comparer.finish()?)
    })
}

/// Compares one family's `iptables-save` output with the config, fed a line at a time.
pub struct Comparer<'a> {
    settings: &'a Settings,
    family: Family,
    lexer: Lexer,
    services: Vec<&'a Service>,
    /// Until the nat table takes it.
    index: Option<Index<'a>>,
    table: Option<Reading<'a>>,
    read: Vec<String>,
    done: Vec<TableEdits<'a>>,
    /// `# Warning: ...` lines the tool printed, for the log.
    pub warnings: Vec<String>,
}

/// One table, as it is read.
struct Reading<'a> {
    name: String,
    /// What iptproxy wants there besides the services' own chains.
    frame: Frame,
    /// The services' own chains (nat of a family with services).
    own: Option<Own<'a>>,
    builtins: BTreeMap<String, Vec<String>>,
    /// The live rules of the frame's chains, and of our chains that should not be there.
    shared: BTreeMap<String, Vec<String>>,
    gone: BTreeMap<String, Vec<String>>,
    current: Current,
}

/// Where the rules being read go.
enum Current {
    Nothing,
    Foreign(String),
    Builtin(String),
    Shared(String),
    Gone(String),
    Own { name: String, slot: usize, rules: Vec<String> },
}

impl Current {
    fn name(&self) -> Option<&str> {
        match self {
            Current::Nothing => None,
            Current::Foreign(n) | Current::Builtin(n) | Current::Shared(n) | Current::Gone(n) => Some(n),
            Current::Own { name, .. } => Some(name),
        }
    }
}

/// The services' own chains as they are read: which were seen, which are still open (declared,
/// their rules not yet ended), and those that differ.
struct Own<'a> {
    index: Index<'a>,
    seen: Bits,
    open: Bits,
    updates: BTreeMap<usize, ChainPlan>,
}

impl<'a> Comparer<'a> {
    pub fn new(config: &'a Config, family: Family) -> Comparer<'a> {
        let services = render::of_family(config, family);
        Comparer {
            settings: &config.settings,
            family,
            lexer: Lexer::new(family),
            index: (!services.is_empty()).then(|| Index::new(services.clone())),
            services,
            table: None,
            read: Vec::new(),
            done: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn line(&mut self, raw: &str) -> Result<(), SaveError> {
        match self.lexer.next(raw)? {
            Line::Nothing => {}
            Line::Warning(w) => self.warnings.push(w.to_string()),
            Line::Table(name) => {
                if self.read.iter().any(|t| t == name) {
                    return Err(self.lexer.error("a table printed twice", raw));
                }
                self.read.push(name.to_string());
                self.table = Some(self.reading(name));
            }
            Line::Chain { name, policy } => {
                if let Some(t) = self.table.as_mut() {
                    t.declare(name, policy.is_some());
                }
            }
            Line::Rule { chain, spec, .. } => {
                let Some(t) = self.table.as_mut() else { return Ok(()) };
                if t.current.name() != Some(chain) {
                    t.close(self.settings);
                    if !t.open(chain) {
                        return Err(self.lexer.error("the rules of one chain are not together", raw));
                    }
                }
                t.push(spec);
            }
            Line::Commit => {
                if let Some(t) = self.table.take() {
                    let edits = t.finish(self.settings, self.family);
                    self.done.push(edits);
                }
            }
        }
        Ok(())
    }

    /// The edits of every table: those read, and those iptproxy writes that were not there.
    pub fn finish(mut self) -> Result<Vec<TableEdits<'a>>, SaveError> {
        self.lexer.finish()?;
        for name in render::TABLES {
            if !self.services.is_empty() && !self.read.iter().any(|t| t == name) {
                let t = self.reading(name);
                self.done.push(t.finish(self.settings, self.family));
            }
        }
        Ok(self.done)
    }

    fn reading(&mut self, name: &str) -> Reading<'a> {
        let frame = match self.services.is_empty() {
            true => Frame { family: self.family, table: name.into(), leaves: vec![], tops: vec![], hooks: vec![] },
            false => render::frame(self.settings, self.family, name, &self.services),
        };
        let own = match name {
            "nat" => self.index.take().map(|index| {
                let slots = index.slots();
                Own { index, seen: Bits::new(slots), open: Bits::new(slots), updates: BTreeMap::new() }
            }),
            _ => None,
        };
        Reading {
            name: name.to_string(),
            frame,
            own,
            builtins: BTreeMap::new(),
            shared: BTreeMap::new(),
            gone: BTreeMap::new(),
            current: Current::Nothing,
        }
    }
}

impl<'a> Reading<'a> {
    fn declare(&mut self, name: &str, builtin: bool) {
        if builtin {
            self.builtins.entry(name.to_string()).or_default();
        } else if chains::is_ours(name) {
            if self.frame.chain(name).is_some() {
                self.shared.entry(name.to_string()).or_default();
            } else if let Some(slot) = self.own.as_ref().and_then(|o| o.index.find(name)) {
                if let Some(own) = self.own.as_mut() {
                    own.seen.set(slot);
                    own.open.set(slot);
                }
            } else {
                self.gone.entry(name.to_string()).or_default();
            }
        }
    }

    /// Starts reading the rules of `chain`; false when they were read before (a chain's
    /// rules come together in iptables-save's output; compared piecemeal, they would be
    /// compared wrong).
    fn open(&mut self, chain: &str) -> bool {
        let name = chain.to_string();
        self.current = if self.builtins.contains_key(chain) {
            Current::Builtin(name)
        } else if !chains::is_ours(chain) {
            Current::Foreign(name)
        } else if self.frame.chain(chain).is_some() {
            self.shared.entry(name.clone()).or_default();
            Current::Shared(name)
        } else if let Some(slot) = self.own.as_ref().and_then(|o| o.index.find(chain)) {
            let Some(own) = self.own.as_mut() else { return true };
            if own.seen.get(slot) && !own.open.get(slot) {
                return false;
            }
            own.seen.set(slot);
            own.open.set(slot);
            Current::Own { name, slot, rules: Vec::new() }
        } else {
            self.gone.entry(name.clone()).or_default();
            Current::Gone(name)
        };
        true
    }

    fn push(&mut self, spec: &str) {
        let kept = match &mut self.current {
            Current::Nothing | Current::Foreign(_) => None,
            Current::Own { rules, .. } => Some(rules),
            Current::Builtin(n) => self.builtins.get_mut(n.as_str()),
            Current::Shared(n) => self.shared.get_mut(n.as_str()),
            Current::Gone(n) => self.gone.get_mut(n.as_str()),
        };
        if let Some(rules) = kept {
            rules.push(spec.to_string());
        }
    }

    /// Ends the chain being read: one of the services' own is compared now, and dropped.
    fn close(&mut self, settings: &Settings) {
        if let (Current::Own { name, slot, rules }, Some(own)) =
            (std::mem::replace(&mut self.current, Current::Nothing), self.own.as_mut())
        {
            own.compare(settings, &name, slot, &rules);
        }
    }

    fn finish(mut self, settings: &'a Settings, family: Family) -> TableEdits<'a> {
        self.close(settings);
        if let Some(own) = self.own.as_mut() {
            // Declared, but no rule came: empty chains.
            for slot in own.open.ones().collect::<Vec<_>>() {
                let name = own.index.name(slot);
                own.compare(settings, &name, slot, &[]);
            }
        }
        let change = |(name, chain): &(String, crate::ruleset::Chain)| {
            plan::chain_change(name, self.shared.get(name).map(|r| r.iter().map(String::as_str)), chain.specs())
        };
        let first = self.frame.leaves.iter().filter_map(change).collect();
        let mut then: Vec<ChainPlan> = self.frame.tops.iter().filter_map(change).collect();
        let mut builtins: BTreeSet<&str> = self.frame.hooks.iter().map(|h| h.chain.as_str()).collect();
        builtins.extend(self.builtins.keys().map(String::as_str));
        for name in builtins {
            let hooks: Vec<_> = self.frame.hooks.iter().filter(|h| h.chain == name).collect();
            let before: Vec<&str> =
                self.builtins.get(name).map(|r| r.iter().map(String::as_str).collect()).unwrap_or_default();
            then.extend(plan::plan_hooks(name, &before, &hooks));
        }
        let deleted = self
            .gone
            .iter()
            .map(|(name, rules)| plan::deletion(name, &rules.iter().map(String::as_str).collect::<Vec<_>>()))
            .collect();
        let services = match self.own {
            Some(own) => Services::Live(Missing { settings, index: own.index, seen: own.seen, updates: own.updates }),
            None => Services::None,
        };
        TableEdits { family, table: self.name, first, services, then, deleted }
    }
}

impl Own<'_> {
    /// Compares the live rules of one of the services' own chains with what they should be.
    fn compare(&mut self, settings: &Settings, name: &str, slot: usize, live: &[String]) {
        self.open.clear(slot);
        let (k, which) = self.index.decode(slot);
        let Some(desired) = service::chain(settings, self.index.services[k], which) else { return };
        if let Some(update) = plan::chain_change(name, Some(live.iter().map(String::as_str)), desired.specs()) {
            self.updates.insert(slot, update);
        }
    }
}

/// The services' own chains that a comparison with the live rules found missing or
/// different: the missing ones rendered only when iterated.
pub struct Missing<'a> {
    settings: &'a Settings,
    index: Index<'a>,
    seen: Bits,
    updates: BTreeMap<usize, ChainPlan>,
}

impl Missing<'_> {
    /// One group per service with something to create or update, in service order.
    pub fn groups(&self) -> impl Iterator<Item = Vec<Cow<'_, ChainPlan>>> {
        self.index.services.iter().enumerate().filter_map(move |(k, s)| {
            let which = service::which_chains(s);
            let missing = |w: &Which| !self.seen.get(self.index.slot(k, *w));
            let group: Vec<Cow<ChainPlan>> = if which.iter().all(missing) {
                // None of them is there (a first sync): render them all at once.
                service::chains(self.settings, s)
                    .iter()
                    .map(|(name, chain)| Cow::Owned(plan::creation(name, chain)))
                    .collect()
            } else {
                which
                    .iter()
                    .filter_map(|w| {
                        let slot = self.index.slot(k, *w);
                        match self.seen.get(slot) {
                            true => self.updates.get(&slot).map(Cow::Borrowed),
                            false => service::chain(self.settings, s, *w)
                                .map(|chain| Cow::Owned(plan::creation(&service::chain_name(s, *w), &chain))),
                        }
                    })
                    .collect()
            };
            (!group.is_empty()).then_some(group)
        })
    }

    /// The chains that were there but differ.
    pub fn updates(&self) -> impl Iterator<Item = &ChainPlan> {
        self.updates.values()
    }
}

/// The services' own chains by name, without holding names: each service has a range of
/// slots (`SVC`, `EXT`, `FW`, then one per endpoint), and each chain it makes is listed by
/// its name's [`chains::key`].
pub struct Index<'a> {
    services: Vec<&'a Service>,
    /// Where each service's slots start; one more at the end.
    first: Vec<usize>,
    /// (key, slot), sorted by key.
    by_key: Vec<(u128, usize)>,
}

impl<'a> Index<'a> {
    pub fn new(services: Vec<&'a Service>) -> Index<'a> {
        let mut first = Vec::with_capacity(services.len() + 1);
        let mut by_key = Vec::new();
        let mut next = 0;
        for s in &services {
            first.push(next);
            for (which, name) in service::chain_names(s) {
                by_key.extend(chains::key(&name).map(|key| (key, next + offset(which))));
            }
            next += 3 + s.endpoints.len();
        }
        first.push(next);
        by_key.sort_unstable();
        Index { services, first, by_key }
    }

    fn slots(&self) -> usize {
        self.first.last().copied().unwrap_or(0)
    }

    fn slot(&self, k: usize, which: Which) -> usize {
        self.first[k] + offset(which)
    }

    fn decode(&self, slot: usize) -> (usize, Which) {
        let k = self.first.partition_point(|f| *f <= slot).saturating_sub(1);
        let which = match slot - self.first[k] {
            0 => Which::Svc,
            1 => Which::Ext,
            2 => Which::Fw,
            n => Which::Sep(n - 3),
        };
        (k, which)
    }

    /// The slot of the chain named `name`, if the config makes it.
    pub fn find(&self, name: &str) -> Option<usize> {
        let key = chains::key(name)?;
        let i = self.by_key.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        Some(self.by_key[i].1)
    }

    fn name(&self, slot: usize) -> String {
        let (k, which) = self.decode(slot);
        service::chain_name(self.services[k], which)
    }
}

fn offset(which: Which) -> usize {
    match which {
        Which::Svc => 0,
        Which::Ext => 1,
        Which::Fw => 2,
        Which::Sep(i) => 3 + i,
    }
}

/// A set of slots.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    fn clear(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, w)| (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| i * 64 + b))
    }
}

#[cfg(test)]
mod tests;
