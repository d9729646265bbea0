//! What an apply changes in one table, in an order that is safe to apply, with the part that
//! belongs to services rendered only when it is written: a first sync of ten thousand
//! services never holds its whole plan.
//!
//! The order: the chains per-service chains jump to (`MARK-*`); then each service's own
//! chains, one group per service (endpoint chains, `SVC`, `EXT`, `FW`: each before any that
//! jumps to it); then the chains that jump to those (`NODEPORTS`, `SERVICES`) and the other
//! fixed ones; then the built-in chains (hooks); last the deletions, every chain flushed
//! before any is deleted. A transaction may end after any group and the kernel is still
//! consistent: every chain is complete before anything jumps to it, a service's chains
//! change together, and nothing jumps to a chain when it goes.

use std::borrow::Cow;

use crate::compare::Missing;
use crate::incremental::Changed;
use crate::plan::{Action, ChainPlan, Summary, TablePlan};
use crate::ruleset::Family;

pub struct TableEdits<'a> {
    pub family: Family,
    pub table: String,
    /// Created or updated before any service's chains.
    pub first: Vec<ChainPlan>,
    /// The services' own chains.
    pub services: Services<'a>,
    /// Created or updated after the services' chains, built-in chains last.
    pub then: Vec<ChainPlan>,
    /// Deleted, besides the services' chains that go.
    pub deleted: Vec<ChainPlan>,
}

/// Where the services' own chains come from.
pub enum Services<'a> {
    None,
    /// Compared with the live rules: the desired chains that are missing (rendered when
    /// iterated) and those that differ.
    Live(Missing<'a>),
    /// Compared with the config applied before: the services that changed, rendered old
    /// and new when iterated.
    Changed(Changed<'a>),
}

type Groups<'e> = Box<dyn Iterator<Item = Vec<Cow<'e, ChainPlan>>> + 'e>;

impl Services<'_> {
    /// Creations and updates, one group per service, in service order.
    pub fn groups(&self) -> Groups<'_> {
        match self {
            Services::None => Box::new(std::iter::empty()),
            Services::Live(m) => Box::new(m.groups()),
            Services::Changed(c) => Box::new(c.groups()),
        }
    }

    /// The services' chains that go.
    pub fn deleted(&self) -> Box<dyn Iterator<Item = ChainPlan> + '_> {
        match self {
            Services::None | Services::Live(_) => Box::new(std::iter::empty()),
            Services::Changed(c) => Box::new(c.deleted()),
        }
    }

    /// The chains updated, for reading them back after the apply (a changed service's are
    /// rendered again).
    pub fn updates(&self) -> Box<dyn Iterator<Item = Cow<'_, ChainPlan>> + '_> {
        match self {
            Services::None => Box::new(std::iter::empty()),
            Services::Live(m) => Box::new(m.updates().map(Cow::Borrowed)),
            Services::Changed(c) => Box::new(c.groups().flatten()),
        }
    }
}

impl<'a> TableEdits<'a> {
    /// A materialised plan as edits, in its own order.
    pub fn from_plan(plan: &TablePlan) -> TableEdits<'a> {
        let (deleted, first) = plan.chains.iter().cloned().partition(|c| c.action == Action::Delete);
        TableEdits {
            family: plan.family,
            table: plan.table.clone(),
            first,
            services: Services::None,
            then: Vec::new(),
            deleted,
        }
    }

    /// Creations and updates, in groups never to be split between transactions.
    pub fn groups(&self) -> impl Iterator<Item = Vec<Cow<'_, ChainPlan>>> {
        fn one(c: &ChainPlan) -> Vec<Cow<'_, ChainPlan>> {
            vec![Cow::Borrowed(c)]
        }
        self.first.iter().map(one).chain(self.services.groups()).chain(self.then.iter().map(one))
    }

    /// Every chain that goes.
    pub fn deletions(&self) -> impl Iterator<Item = Cow<'_, ChainPlan>> {
        self.deleted.iter().map(Cow::Borrowed).chain(self.services.deleted().map(Cow::Owned))
    }

    /// Every change, in order: what `iptproxy plan` shows.
    pub fn to_plan(&self) -> TablePlan {
        let mut chains: Vec<ChainPlan> = self.groups().flatten().map(Cow::into_owned).collect();
        chains.extend(self.deletions().map(Cow::into_owned));
        TablePlan { family: self.family, table: self.table.clone(), chains }
    }

    /// What the edits change, counted (each chain rendered once more).
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in self.groups().flatten().chain(self.deletions()) {
            s.add(&c);
        }
        s
    }
}

/// Every table's changes as one plan, leaving out tables with none.
pub fn to_plan(edits: &[TableEdits]) -> crate::plan::Plan {
    let tables = edits.iter().map(TableEdits::to_plan).filter(|t| !t.chains.is_empty()).collect();
    crate::plan::Plan { tables }
}
