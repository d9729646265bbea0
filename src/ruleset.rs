//! The shape both sides of a plan share: tables of chains of rules.
//!
//! A [`Table`] read from `iptables-save` holds every chain the kernel has, built-in and
//! foreign ones included. A table rendered from the config holds only iptproxy's own chains,
//! plus its [`Hook`]s: the jump rules it places in built-in chains.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// An IP family: IPv4 rules go through `iptables`, IPv6 rules through `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn of(addr: &std::net::IpAddr) -> Family {
        if addr.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 }
    }

    /// The tool family name: `iptables` or `ip6tables`.
    pub fn tool(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// Packet and byte counters, as `iptables-save -c` prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// One rule: its specification as `iptables-save` prints it after `-A CHAIN `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub spec: String,
    pub counters: Option<Counters>,
}

impl Rule {
    pub fn new(spec: impl Into<String>) -> Rule {
        Rule { spec: spec.into(), counters: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// The policy of a built-in chain (`ACCEPT`, `DROP`); `None` for a user-defined chain.
    pub policy: Option<String>,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn user(rules: Vec<Rule>) -> Chain {
        Chain { policy: None, rules }
    }

    pub fn is_builtin(&self) -> bool {
        self.policy.is_some()
    }

    pub fn specs(&self) -> impl Iterator<Item = &str> + Clone {
        self.rules.iter().map(|r| r.spec.as_str())
    }
}

/// Where a hook goes when it is missing from its built-in chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Inserted at the top: our rule must see the packet before others do.
    First,
    /// Appended: our rule only decides what no other rule decided.
    Last,
}

/// A jump rule iptproxy keeps in a built-in chain. A hook found anywhere in its chain is
/// left where it is; [`Placement`] only says where a missing one is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub chain: String,
    pub spec: String,
    pub placement: Placement,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    /// Chains by name. A rendered table holds only iptproxy's chains.
    pub chains: BTreeMap<String, Chain>,
    /// Rendered tables only: the jumps iptproxy keeps in built-in chains.
    pub hooks: Vec<Hook>,
}

impl Table {
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table { family, name: name.into(), chains: BTreeMap::new(), hooks: Vec::new() }
    }

    /// A rendered table as it stands in the kernel once applied, seen from our side: our
    /// chains, plus built-in chains holding only our hooks (top hooks first, then appended
    /// ones): what the tests and benchmarks take as the live rules of a config.
    pub fn as_live(&self) -> Table {
        let mut live = Table { hooks: Vec::new(), ..self.clone() };
        live.chains.extend(self.hook_chains());
        live
    }

    /// The built-in chains as [`as_live`](Table::as_live) sees them: each holding only our
    /// hooks, top hooks first, then appended ones.
    pub fn hook_chains(&self) -> BTreeMap<String, Chain> {
        let mut chains = BTreeMap::new();
        for placement in [Placement::First, Placement::Last] {
            for hook in self.hooks.iter().filter(|h| h.placement == placement) {
                let chain = chains
                    .entry(hook.chain.clone())
                    .or_insert_with(|| Chain { policy: Some("ACCEPT".into()), rules: Vec::new() });
                chain.rules.push(Rule::new(hook.spec.clone()));
            }
        }
        chains
    }

    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum::<usize>() + self.hooks.len()
    }
}

/// Tables of one or both families, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    pub fn table(&self, family: Family, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family && t.name == name)
    }

    pub fn family(&self, family: Family) -> impl Iterator<Item = &Table> {
        self.tables.iter().filter(move |t| t.family == family)
    }

    /// See [`Table::as_live`].
    pub fn as_live(&self) -> Ruleset {
        Ruleset { tables: self.tables.iter().map(Table::as_live).collect() }
    }
}
