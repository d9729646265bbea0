//! For the property tests: generated configs, and a kernel simulated as a ruleset that
//! plans are carried out on the way iptables carries them out.

use std::path::PathBuf;

use proptest::prelude::*;

use crate::config::{Config, from_sources};
use crate::plan::{Action, Op, Plan};
use crate::ruleset::{Chain, Rule, Ruleset, Table};

/// One generated service. Names, addresses and node ports derive from `slot`, so that any
/// set of distinct slots is a valid config, and two configs share services by slot.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    slot: u8,
    v6: bool,
    protocol: u8,
    port: u16,
    /// (address index, port offset, weight)
    endpoints: Vec<(u8, u16, u8)>,
    node_port: bool,
    external: u8,
    ranges: u8,
    affinity: bool,
    masquerade: u8,
    /// Which file it is written to.
    file: u8,
}

#[derive(Debug, Clone)]
pub struct ConfigSpec {
    cidr4: bool,
    cidr6: bool,
    masquerade_all: bool,
    random_fully: bool,
    forward_accept: bool,
    services: Vec<ServiceSpec>,
}

const SLOTS: u8 = 8;

fn service(slot: u8) -> impl Strategy<Value = ServiceSpec> {
    (
        (any::<bool>(), 0u8..3, prop_oneof![Just(80u16), Just(81u16)]),
        prop::collection::vec((0u8..5, 0u16..2, 0u8..3), 0..5),
        (any::<bool>(), 0u8..3, 0u8..3),
        (any::<bool>(), 0u8..3, 0u8..2),
    )
        .prop_map(
            move |(
                (v6, protocol, port),
                mut endpoints,
                (node_port, external, ranges),
                (affinity, masquerade, file),
            )| {
                let mut seen = std::collections::HashSet::new();
                endpoints.retain(|(a, p, _)| seen.insert((*a, *p)));
                ServiceSpec {
                    slot,
                    v6,
                    protocol,
                    port,
                    endpoints,
                    node_port,
                    external,
                    ranges,
                    affinity,
                    masquerade,
                    file,
                }
            },
        )
}

/// A valid config of up to eight services, in one or two files.
pub fn config_spec() -> impl Strategy<Value = ConfigSpec> {
    let services = prop::collection::vec(prop::option::of(Just(())), SLOTS as usize).prop_flat_map(|present| {
        let slots: Vec<u8> = (0..SLOTS).filter(|i| present[*i as usize].is_some()).collect();
        slots.into_iter().map(service).collect::<Vec<_>>()
    });
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), services).prop_map(
        |(cidr4, cidr6, masquerade_all, random_fully, forward_accept, services)| ConfigSpec {
            cidr4,
            cidr6,
            masquerade_all,
            random_fully,
            forward_accept,
            services,
        },
    )
}

/// Two configs, the second a variation of the first: some services replaced, removed or
/// added, sometimes moved to another file, sometimes the settings changed.
pub fn config_pair() -> impl Strategy<Value = (ConfigSpec, ConfigSpec)> {
    (config_spec(), config_spec(), prop::collection::vec(0u8..4, SLOTS as usize), any::<bool>()).prop_map(
        |(old, other, choice, same_settings)| {
            let mut new =
                if same_settings { ConfigSpec { services: Vec::new(), ..old.clone() } } else { other.clone() };
            new.services.clear();
            for slot in 0..SLOTS {
                let a = old.services.iter().find(|s| s.slot == slot);
                let b = other.services.iter().find(|s| s.slot == slot);
                let pick = match choice[slot as usize] {
                    // Mostly unchanged, as in a real edit.
                    0 | 1 => a.cloned(),
                    2 => b.cloned(),
                    _ => a.map(|s| ServiceSpec { file: 1 - s.file, ..s.clone() }),
                };
                new.services.extend(pick);
            }
            (old, new)
        },
    )
}

impl ConfigSpec {
    /// The config files' names and texts.
    pub fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = vec![String::new(), String::new()];
        let mut cidrs = Vec::new();
        if self.cidr4 {
            cidrs.push("\"198.19.0.0/16\"");
        }
        if self.cidr6 {
            cidrs.push("\"2001:db8:1::/64\"");
        }
        files[0].push_str(&format!(
            "[settings]\ncluster_cidrs = [{}]\nmasquerade_all = {}\nrandom_fully = {}\nforward_accept = {}\n\n",
            cidrs.join(", "),
            self.masquerade_all,
            self.random_fully,
            self.forward_accept
        ));
        for s in &self.services {
            files[usize::from(s.file)].push_str(&s.toml());
        }
        files.into_iter().enumerate().map(|(i, text)| (PathBuf::from(format!("{i}.toml")), text.into_bytes())).collect()
    }

    pub fn config(&self) -> Config {
        match from_sources(self.files()) {
            Ok(c) => c,
            Err(e) => panic!("a generated config is invalid: {e}\n{:?}", self.files()),
        }
    }
}

impl ServiceSpec {
    fn addr(&self, host: u32) -> String {
        if self.v6 {
            format!("2001:db8:{:x}::{:x}", host >> 16, host & 0xffff)
        } else {
            format!("198.{}.{}.{}", 18 + (host >> 16), (host >> 8) & 0xff, host & 0xff)
        }
    }

    fn toml(&self) -> String {
        let slot = u32::from(self.slot);
        let protocol = ["tcp", "udp", "sctp"][usize::from(self.protocol)];
        let mut t = format!(
            "[[service]]\nname = \"s{slot}\"\nprotocol = \"{protocol}\"\nvip = \"{}\"\nport = {}\n",
            self.addr(slot + 1),
            self.port
        );
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|(a, p, w)| {
                format!(
                    "{{ address = \"{}\", port = {}, weight = {w} }}",
                    self.addr((1 << 16) + u32::from(*a) + 1),
                    8080 + p
                )
            })
            .collect();
        t.push_str(&format!("endpoints = [{}]\n", endpoints.join(", ")));
        if self.node_port {
            t.push_str(&format!("node_port = {}\n", 30000 + slot));
        }
        if self.external > 0 {
            let ips: Vec<String> =
                (0..u32::from(self.external)).map(|k| format!("\"{}\"", self.addr(0x100 + slot * 4 + k))).collect();
            t.push_str(&format!("external_ips = [{}]\n", ips.join(", ")));
            if self.ranges > 0 {
                let ranges: Vec<String> =
                    (0..u32::from(self.ranges)).map(|k| format!("\"{}\"", self.addr(0x200 + k))).collect();
                t.push_str(&format!("source_ranges = [{}]\n", ranges.join(", ")));
            }
        }
        if self.affinity {
            t.push_str("session_affinity = \"client-ip\"\n");
        }
        t.push_str(&format!("masquerade = \"{}\"\n\n", ["auto", "always", "never"][usize::from(self.masquerade)]));
        t
    }
}

/// Carries out `plan` on `live` as iptables-restore would, panicking on an edit iptables
/// would refuse (a position out of range, a rule to delete that is not there, a chain
/// created twice or edited before it exists).
pub fn carry_out(live: &Ruleset, plan: &Plan) -> Ruleset {
    let mut out = live.clone();
    for tp in &plan.tables {
        let at = match out.tables.iter().position(|t| t.family == tp.family && t.name == tp.table) {
            Some(i) => i,
            None => {
                out.tables.push(Table::new(tp.family, tp.table.clone()));
                out.tables.len() - 1
            }
        };
        let table = &mut out.tables[at];
        for c in &tp.chains {
            match c.action {
                Action::Create => {
                    assert!(!table.chains.contains_key(&c.chain), "{} created twice", c.chain);
                    table.chains.insert(c.chain.clone(), Chain::default());
                }
                Action::Delete => {
                    let gone = table.chains.remove(&c.chain);
                    assert!(gone.is_some(), "{} deleted but not there", c.chain);
                    continue;
                }
                Action::Update => {}
            }
            if crate::chains::BUILTIN.contains(&c.chain.as_str()) {
                let builtin = Chain { policy: Some("ACCEPT".into()), rules: Vec::new() };
                table.chains.entry(c.chain.clone()).or_insert(builtin);
            }
            let chain = table.chains.get_mut(&c.chain).unwrap_or_else(|| panic!("{} edited but not there", c.chain));
            edit(&mut chain.rules, &c.ops, &c.chain);
        }
    }
    out
}

fn edit(rules: &mut Vec<Rule>, ops: &[Op], chain: &str) {
    for op in ops {
        match op {
            Op::Append { rule } => rules.push(Rule::new(rule.clone())),
            Op::Insert { position, rule } => {
                // As iptables: 1 to one past the end.
                assert!(
                    *position >= 1 && *position <= rules.len() + 1,
                    "{chain}: insert at {position} of {}",
                    rules.len()
                );
                rules.insert(position - 1, Rule::new(rule.clone()));
            }
            Op::Replace { position, rule } => {
                assert!(*position >= 1 && *position <= rules.len(), "{chain}: replace {position} of {}", rules.len());
                rules[position - 1] = Rule::new(rule.clone());
            }
            Op::Delete { position } => {
                assert!(*position >= 1 && *position <= rules.len(), "{chain}: delete {position} of {}", rules.len());
                rules.remove(position - 1);
            }
            Op::DeleteRule { rule } => {
                let i = rules.iter().position(|r| &r.spec == rule);
                let i = i.unwrap_or_else(|| panic!("{chain}: no rule {rule:?} to delete"));
                rules.remove(i);
            }
        }
    }
}

/// Our part of a ruleset, comparable with a rendered one: our chains, and in each built-in
/// chain our hooks, sorted (a hook is left wherever it is found, so their order depends on
/// what was there before).
pub fn ours(live: &Ruleset) -> Ruleset {
    let mut tables: Vec<Table> = crate::confirm::ours(live).as_live().tables;
    tables.sort_by(|a, b| (a.family, &a.name).cmp(&(b.family, &b.name)));
    for chain in tables.iter_mut().flat_map(|t| t.chains.values_mut()).filter(|c| c.is_builtin()) {
        chain.rules.sort_by(|a, b| a.spec.cmp(&b.spec));
    }
    Ruleset { tables }
}

/// A ruleset as `iptables-save` prints it: every chain declared, then the rules chain by
/// chain (built-in chains first, as the tool prints them).
pub fn save_text(live: &Ruleset, family: crate::ruleset::Family) -> String {
    let mut out = String::new();
    for t in live.family(family) {
        out.push_str(&format!("# Generated by iptables-save\n*{}\n", t.name));
        let order: Vec<(&String, &Chain)> = t
            .chains
            .iter()
            .filter(|(_, c)| c.is_builtin())
            .chain(t.chains.iter().filter(|(_, c)| !c.is_builtin()))
            .collect();
        for (name, c) in &order {
            out.push_str(&format!(":{name} {} [0:0]\n", c.policy.as_deref().unwrap_or("-")));
        }
        for (name, c) in &order {
            for r in &c.rules {
                out.push_str(&format!("-A {name} {}\n", r.spec));
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}
