//! The change from the rules one config makes to those another makes, touching only the
//! services that changed: what the daemon applies for a file change between resyncs,
//! planned against the config it applied last instead of the live rules.
//!
//! Only a service whose definition changed (compared without where it is written) can have
//! different chains: its old and new versions are rendered and their chains diffed. Its
//! rules in the shared chains (`SERVICES`, `NODEPORTS`, filter `SERVICES`) are spliced in
//! place: each service's rules there are contiguous, in name order, so their position is a
//! count of the rules of the services before it, and the shared chains are never rendered
//! whole. A one-endpoint edit costs a few chains' rendering, whatever the config's size.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::chains;
use crate::config::{Config, Service, Settings};
use crate::edits::{Services, TableEdits};
use crate::plan::{self, Action, ChainPlan, Op};
use crate::render::{self, service};
use crate::ruleset::Rule;

/// The edits from what `old` makes to what `new` makes. `None` when the change reaches
/// every service or table (settings that shape the rules, a family gaining or losing all
/// its services): such a change is planned against the live rules instead.
pub fn between<'a>(old: &'a Config, new: &'a Config) -> Option<Vec<TableEdits<'a>>> {
    let families = render::families(new);
    if !old.settings.same_rules(&new.settings) || render::families(old) != families {
        return None;
    }
    let pairs = changed(old, new);
    let mut edits = Vec::new();
    for family in families {
        let olds = render::of_family(old, family);
        let news = render::of_family(new, family);
        let in_family = |s: Option<&'a Service>| s.filter(|s| s.family() == family);
        let mine: Vec<Pair> = pairs
            .iter()
            .map(|(o, n)| (in_family(*o), in_family(*n)))
            .filter(|(o, n)| o.is_some() || n.is_some())
            .collect();
        if mine.is_empty() {
            continue;
        }

        let mut then = Vec::new();
        let mut deleted = Vec::new();
        let (had, has) =
            (olds.iter().any(|s| service::node_port_len(s) > 0), news.iter().any(|s| service::node_port_len(s) > 0));
        let node_ports = |services: &[&Service]| render::shared(family, "nat", chains::NODEPORTS, services);
        match (had, has) {
            (true, true) => then.extend(splice(
                chains::NODEPORTS,
                &olds,
                &news,
                &[],
                &[],
                |s| service::node_port(s).into_iter().collect(),
                service::node_port_len,
            )),
            (false, true) => {
                then.push(plan::creation(chains::NODEPORTS, &crate::ruleset::Chain::user(node_ports(&news))))
            }
            (true, false) => deleted.push(plan::deletion(chains::NODEPORTS, &specs(&node_ports(&olds)))),
            (false, false) => {}
        }
        let tail = |has: bool| if has { vec![render::node_ports_jump(family)] } else { Vec::new() };
        then.extend(splice(
            chains::SERVICES,
            &olds,
            &news,
            &tail(had),
            &tail(has),
            service::dispatch,
            service::dispatch_len,
        ));
        edits.push(TableEdits {
            family,
            table: "nat".into(),
            first: Vec::new(),
            services: Services::Changed(Changed { old: &old.settings, new: &new.settings, pairs: mine }),
            then,
            deleted,
        });

        let rejects = splice(chains::SERVICES, &olds, &news, &[], &[], service::rejects, service::rejects_len);
        edits.push(TableEdits {
            family,
            table: "filter".into(),
            first: Vec::new(),
            services: Services::None,
            then: rejects.into_iter().collect(),
            deleted: Vec::new(),
        });
    }
    Some(edits)
}

type Pair<'a> = (Option<&'a Service>, Option<&'a Service>);

/// The services that differ, by name: (old version, new version), either missing when the
/// service was added or removed.
fn changed<'a>(old: &'a Config, new: &'a Config) -> Vec<Pair<'a>> {
    let mut pairs = Vec::new();
    let (mut o, mut n) = (old.services.iter().peekable(), new.services.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) => match a.name.cmp(&b.name) {
                Ordering::Less => pairs.push((o.next(), None)),
                Ordering::Greater => pairs.push((None, n.next())),
                Ordering::Equal => {
                    let (a, b) = (o.next(), n.next());
                    if !a.zip(b).is_some_and(|(a, b)| a.same_rules(b)) {
                        pairs.push((a, b));
                    }
                }
            },
            (Some(_), None) => pairs.push((o.next(), None)),
            (None, Some(_)) => pairs.push((None, n.next())),
        }
    }
    pairs
}

/// The edits of one shared chain, whose rules are each service's `rules` in name order,
/// then `tail`: only the stretches of the services that changed are rendered and diffed,
/// at the position that the counts (`len`) of the rules before them give. Its `before` and
/// `after` are left empty: the chain is never rendered whole.
fn splice(
    chain: &str,
    olds: &[&Service],
    news: &[&Service],
    old_tail: &[Rule],
    new_tail: &[Rule],
    rules: impl Fn(&Service) -> Vec<Rule>,
    len: impl Fn(&Service) -> usize,
) -> Option<ChainPlan> {
    let mut ops: Vec<Op> = Vec::new();
    let mut at = 1;
    let mut chain_len: usize = olds.iter().map(|s| len(s)).sum::<usize>() + old_tail.len();
    let mut stretch = |before: &[Rule], after: &[Rule], at: &mut usize, chain_len: &mut usize| {
        let old = specs(before);
        ops.extend(by_text(&old, *at, plan::diff_at(&old, &specs(after), *at, *chain_len)));
        *chain_len = *chain_len - before.len() + after.len();
        *at += after.len();
    };
    let (mut o, mut n) = (olds.iter().peekable(), news.iter().peekable());
    loop {
        let (a, b) = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) => match a.name.cmp(&b.name) {
                Ordering::Less => (o.next(), None),
                Ordering::Greater => (None, n.next()),
                Ordering::Equal => (o.next(), n.next()),
            },
            (Some(_), None) => (o.next(), None),
            (None, Some(_)) => (None, n.next()),
        };
        match (a, b) {
            (Some(a), Some(b)) if a.same_rules(b) => at += len(b),
            _ => {
                let before = a.map(|s| rules(s)).unwrap_or_default();
                let after = b.map(|s| rules(s)).unwrap_or_default();
                stretch(&before, &after, &mut at, &mut chain_len);
            }
        }
    }
    stretch(old_tail, new_tail, &mut at, &mut chain_len);
    let chain = chain.to_string();
    (!ops.is_empty()).then_some(ChainPlan { chain, action: Action::Update, before: Vec::new(), after: Vec::new(), ops })
}

/// `ops`, edits of the stretch `before` that stands from position `at`, with deletions and
/// replacements made by the rule's text. The positions come from the record, not the
/// kernel: after a hand edit of a shared chain, a deletion by position would remove
/// another service's rule. A misplaced insertion only changes the order of services'
/// rules, which no packet sees (each matches its own address and port), and the next
/// resync puts it right.
fn by_text(before: &[&str], at: usize, ops: Vec<Op>) -> Vec<Op> {
    let mut stretch: Vec<&str> = before.to_vec();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let i = match &op {
            Op::Insert { position, .. } | Op::Replace { position, .. } | Op::Delete { position } => {
                position.checked_sub(at)
            }
            Op::Append { .. } | Op::DeleteRule { .. } => None,
        };
        match (op, i) {
            (Op::Delete { .. }, Some(i)) if i < stretch.len() => {
                out.push(Op::DeleteRule { rule: stretch.remove(i).to_string() });
            }
            (Op::Replace { position, rule }, Some(i)) if i < stretch.len() => {
                out.push(Op::DeleteRule { rule: stretch[i].to_string() });
                out.push(Op::Insert { position, rule });
                // The stretch as edited: only its old rules are ever deleted.
                stretch[i] = "";
            }
            (Op::Insert { position, rule }, Some(i)) if i <= stretch.len() => {
                stretch.insert(i, "");
                out.push(Op::Insert { position, rule });
            }
            (op, _) => out.push(op),
        }
    }
    out
}

fn specs(rules: &[Rule]) -> Vec<&str> {
    rules.iter().map(|r| r.spec.as_str()).collect()
}

/// The services that changed, in one family: their own chains rendered old and new, and
/// diffed, when iterated.
pub struct Changed<'a> {
    old: &'a Settings,
    new: &'a Settings,
    pairs: Vec<Pair<'a>>,
}

impl Changed<'_> {
    /// One group per changed service: its chains created or updated.
    pub fn groups(&self) -> impl Iterator<Item = Vec<Cow<'_, ChainPlan>>> {
        self.pairs.iter().filter_map(|(o, n)| {
            let old = o.map(|s| service::chains(self.old, s)).unwrap_or_default();
            let new = n.map(|s| service::chains(self.new, s)).unwrap_or_default();
            let group: Vec<Cow<ChainPlan>> = new
                .iter()
                .filter_map(|(name, chain)| {
                    let before = old.iter().find(|(n, _)| n == name).map(|(_, c)| c.specs());
                    plan::chain_change(name, before, chain.specs()).map(Cow::Owned)
                })
                .collect();
            (!group.is_empty()).then_some(group)
        })
    }

    /// The chains of the old versions that the new ones do not have.
    pub fn deleted(&self) -> impl Iterator<Item = ChainPlan> + '_ {
        self.pairs.iter().flat_map(|(o, n)| {
            let new: Vec<String> =
                n.map(|s| service::chain_names(s).into_iter().map(|(_, name)| name).collect()).unwrap_or_default();
            let old = o.map(|s| service::chains(self.old, s)).unwrap_or_default();
            old.into_iter()
                .filter(move |(name, _)| !new.contains(name))
                .map(|(name, chain)| plan::deletion(&name, &chain.specs().collect::<Vec<_>>()))
        })
    }
}

#[cfg(test)]
mod tests;
