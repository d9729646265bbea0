//! Config -> the rules iptproxy wants, in exactly the form `iptables-save` prints them, so
//! that "no change" is a plain comparison and `plan` right after `apply` is empty.
//!
//! Layout (kube-proxy's, with our prefix), per family that has services:
//!
//! ```text
//! nat    PREROUTING, OUTPUT -> SERVICES -> SVC-x (VIP)     -> cascade -> SEP-y -> DNAT
//!                                      -> EXT-x / FW-x (external IPs; FW checks sources)
//!                                      -> NODEPORTS -> EXT-x (local addresses, last rule)
//!        EXT-x: mark for masquerade, then SVC-x.  FW-x: allowed sources to EXT-x, others MARK-DROP
//!        POSTROUTING -> POSTROUTING: masquerade what MARK-MASQ marked
//! filter INPUT, FORWARD, OUTPUT -> FIREWALL (drop what MARK-DROP marked)
//!                               -> SERVICES (REJECT services without endpoints)
//!        FORWARD (appended) -> FORWARD (accept service traffic nobody else decided on)
//! ```
//!
//! The rules come in pieces that render alone: each service's own chains and its rules in
//! the shared chains ([`service`]), and each table's [`Frame`] (the shared chains, the fixed
//! ones, the hooks). [`render`] assembles them into the whole ruleset.

pub mod service;

use crate::chains;
use crate::config::{Config, Service, Settings};
use crate::ruleset::{Chain, Family, Hook, Placement, Rule, Ruleset, Table};
use crate::spec::quote;

pub use service::Which;

/// The tables iptproxy writes in every family that has services; per-service chains are
/// all in the first.
pub const TABLES: [&str; 2] = ["nat", "filter"];

/// Renders the whole desired ruleset: nat and filter for every family that has services.
pub fn render(config: &Config) -> Ruleset {
    let mut tables = Vec::new();
    for family in families(config) {
        let services = of_family(config, family);
        for name in TABLES {
            let mut table = frame(&config.settings, family, name, &services).into_table();
            if name == "nat" {
                for s in &services {
                    table.chains.extend(service::chains(&config.settings, s));
                }
            }
            tables.push(table);
        }
    }
    Ruleset { tables }
}

/// The families that have services, in [`Family::ALL`] order.
pub fn families(config: &Config) -> Vec<Family> {
    Family::ALL.into_iter().filter(|f| config.services.iter().any(|s| s.family() == *f)).collect()
}

/// The tables `config` makes, as (family, table): what the canaries guard.
pub fn tables(config: &Config) -> Vec<(Family, &'static str)> {
    families(config).into_iter().flat_map(|f| TABLES.map(|t| (f, t))).collect()
}

/// The services of one family, in name order (the order of their rules in shared chains).
pub fn of_family(config: &Config, family: Family) -> Vec<&Service> {
    config.services.iter().filter(|s| s.family() == family).collect()
}

/// The chains of one table that belong to no single service, and its hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub family: Family,
    pub table: String,
    /// Chains that per-service chains jump to (`MARK-*`), in an order they can be created in.
    pub leaves: Vec<(String, Chain)>,
    /// The others: the shared chains that jump to per-service chains (`NODEPORTS` before
    /// `SERVICES`) and the fixed chains only hooks jump to.
    pub tops: Vec<(String, Chain)>,
    /// The jumps iptproxy keeps in built-in chains.
    pub hooks: Vec<Hook>,
}

impl Frame {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.leaves.iter().chain(&self.tops).find(|(n, _)| n == name).map(|(_, c)| c)
    }

    pub fn chains(&self) -> impl Iterator<Item = &(String, Chain)> {
        self.leaves.iter().chain(&self.tops)
    }

    /// The frame as a table, without any service's own chains.
    pub fn into_table(self) -> Table {
        let mut table = Table::new(self.family, self.table);
        table.chains.extend(self.leaves.into_iter().chain(self.tops));
        table.hooks = self.hooks;
        table
    }
}

/// The frame of `table` for `services` (all of `family`'s, in name order). A table iptproxy
/// does not write has an empty frame.
pub fn frame(settings: &Settings, family: Family, table: &str, services: &[&Service]) -> Frame {
    let r = Fixed { f: Fam(family), settings };
    let mut frame = Frame { family, table: table.to_string(), leaves: Vec::new(), tops: Vec::new(), hooks: Vec::new() };
    match table {
        "nat" => r.nat(&mut frame, services),
        "filter" => r.filter(&mut frame, services),
        _ => {}
    }
    frame
}

/// The rules of the chains shared by all services, assembled from each one's piece.
pub fn shared(family: Family, table: &str, chain: &str, services: &[&Service]) -> Vec<Rule> {
    match (table, chain) {
        ("nat", chains::SERVICES) => {
            let mut rules: Vec<Rule> = services.iter().flat_map(|s| service::dispatch(s)).collect();
            if services.iter().any(|s| service::node_port_len(s) > 0) {
                rules.push(node_ports_jump(family));
            }
            rules
        }
        ("nat", chains::NODEPORTS) => services.iter().filter_map(|s| service::node_port(s)).collect(),
        ("filter", chains::SERVICES) => services.iter().flat_map(|s| service::rejects(s)).collect(),
        _ => Vec::new(),
    }
}

/// The last rule of nat `SERVICES` when some service has a node port: local addresses go
/// on to `NODEPORTS`.
pub fn node_ports_jump(family: Family) -> Rule {
    let c = comment("iptproxy node ports; must be the last rule");
    Rule::new(format!("! -d {} {c} -m addrtype --dst-type LOCAL -j {}", Fam(family).loopback(), chains::NODEPORTS))
}

/// What differs between the families' rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fam(pub Family);

impl Fam {
    pub(crate) fn host(self) -> &'static str {
        match self.0 {
            Family::Ipv4 => "/32",
            Family::Ipv6 => "/128",
        }
    }

    fn loopback(self) -> &'static str {
        match self.0 {
            Family::Ipv4 => "127.0.0.0/8",
            Family::Ipv6 => "::1/128",
        }
    }

    pub(crate) fn reject(self) -> &'static str {
        match self.0 {
            Family::Ipv4 => "-j REJECT --reject-with icmp-port-unreachable",
            Family::Ipv6 => "-j REJECT --reject-with icmp6-port-unreachable",
        }
    }

    pub(crate) fn recent_mask(self) -> &'static str {
        match self.0 {
            Family::Ipv4 => "255.255.255.255",
            Family::Ipv6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        }
    }

    /// `-d VIP/32 -p tcp -m comment --comment "..." -m tcp --dport 80`: the canonical order
    /// puts address and protocol first, then matches in the order given.
    pub(crate) fn dest_match(self, s: &Service, addr: &std::net::IpAddr, note: &str) -> String {
        let p = s.protocol.as_str();
        let c = comment(&format!("{} {note}", s.id()));
        format!("-d {addr}{} -p {p} {c} -m {p} --dport {}", self.host(), s.port)
    }
}

pub(crate) fn comment(text: &str) -> String {
    format!("-m comment --comment {}", quote(text))
}

/// Renders the chains of a frame.
struct Fixed<'a> {
    f: Fam,
    settings: &'a Settings,
}

impl Fixed<'_> {
    fn nat(&self, frame: &mut Frame, services: &[&Service]) {
        let (family, settings) = (self.f.0, self.settings);
        let masq = format!("{:#x}", settings.masquerade_mark());
        let mark = |m: u32| user(vec![format!("-j MARK --set-xmark {m:#x}/{m:#x}")]);
        frame.leaves.push((chains::MARK_MASQ.into(), mark(settings.masquerade_mark())));
        frame.leaves.push((chains::MARK_DROP.into(), mark(settings.drop_mark())));
        let cidrs: Vec<_> = settings.cluster_cidrs.iter().filter(|c| c.family() == family).collect();
        if !cidrs.is_empty() {
            let mut rules: Vec<String> = cidrs.iter().map(|cidr| format!("-s {cidr} -j RETURN")).collect();
            let c = comment("masquerade traffic from outside cluster_cidrs");
            rules.push(format!("{c} -j {}", chains::MARK_MASQ));
            frame.leaves.push((chains::MARK_OUTSIDE.into(), user(rules)));
        }

        let node_ports = shared(family, "nat", chains::NODEPORTS, services);
        if !node_ports.is_empty() {
            frame.tops.push((chains::NODEPORTS.into(), Chain::user(node_ports)));
        }
        frame.tops.push((chains::SERVICES.into(), Chain::user(shared(family, "nat", chains::SERVICES, services))));
        let random = if settings.random_fully { " --random-fully" } else { "" };
        let post = user(vec![
            format!("-m mark ! --mark {masq}/{masq} -j RETURN"),
            format!("-j MARK --set-xmark {masq}/0x0"),
            format!("{} -j MASQUERADE{random}", comment("iptproxy service traffic requiring SNAT")),
        ]);
        frame.tops.push((chains::POSTROUTING.into(), post));
        frame.tops.push((chains::CANARY.into(), canary()));

        let portals = format!("{} -j {}", comment("iptproxy service portals"), chains::SERVICES);
        frame.hooks = vec![
            hook("PREROUTING", portals.clone(), Placement::First),
            hook("OUTPUT", portals, Placement::First),
            hook(
                "POSTROUTING",
                format!("{} -j {}", comment("iptproxy postrouting rules"), chains::POSTROUTING),
                Placement::First,
            ),
        ];
    }

    fn filter(&self, frame: &mut Frame, services: &[&Service]) {
        let settings = self.settings;
        let rejects = shared(self.f.0, "filter", chains::SERVICES, services);
        frame.tops.push((chains::SERVICES.into(), Chain::user(rejects)));
        let drop = format!("{:#x}", settings.drop_mark());
        let firewall =
            format!("{} -m mark --mark {drop}/{drop} -j DROP", comment("iptproxy: drop packets denied by policy"));
        frame.tops.push((chains::FIREWALL.into(), user(vec![firewall])));
        frame.tops.push((chains::CANARY.into(), canary()));

        let fw = format!("{} -j {}", comment("iptproxy firewall for denied packets"), chains::FIREWALL);
        let portals =
            format!("-m conntrack --ctstate NEW {} -j {}", comment("iptproxy service portals"), chains::SERVICES);
        for builtin in ["INPUT", "FORWARD", "OUTPUT"] {
            frame.hooks.push(hook(builtin, fw.clone(), Placement::First));
            frame.hooks.push(hook(builtin, portals.clone(), Placement::First));
        }
        if settings.forward_accept {
            let masq = format!("{:#x}", settings.masquerade_mark());
            let rules = user(vec![
                format!(
                    "{} -m mark --mark {masq}/{masq} -j ACCEPT",
                    comment("iptproxy: forward service traffic marked for masquerade")
                ),
                format!(
                    "{} -m conntrack --ctstate DNAT -j ACCEPT",
                    comment("iptproxy: forward connections to service endpoints")
                ),
            ]);
            frame.tops.push((chains::FORWARD.into(), rules));
            let c = comment("iptproxy forwarding rules");
            frame.hooks.push(hook("FORWARD", format!("{c} -j {}", chains::FORWARD), Placement::Last));
        }
    }
}

fn user(specs: Vec<String>) -> Chain {
    Chain::user(specs.into_iter().map(Rule::new).collect())
}

fn canary() -> Chain {
    Chain::user(vec![Rule::new(chains::CANARY_RULE)])
}

fn hook(chain: &str, spec: String, placement: Placement) -> Hook {
    Hook { chain: chain.into(), spec, placement }
}

/// `weight / remaining` as `iptables-save` prints it: the kernel keeps
/// `lround(p * 2^31)` and the tool prints that over 2^31 with 11 decimals (`%.11f`).
pub fn probability(weight: u64, remaining: u64) -> String {
    const ONE: u128 = 1 << 31;
    let (w, r) = (u128::from(weight), u128::from(remaining.max(1)));
    // lround: halves away from zero.
    let fixed = (w * ONE * 2 + r) / (2 * r);
    // printf rounds the exact binary value to nearest, ties to even.
    let scaled = fixed * 100_000_000_000;
    let (mut q, rem) = (scaled / ONE, scaled % ONE);
    if rem * 2 > ONE || (rem * 2 == ONE && q % 2 == 1) {
        q += 1;
    }
    format!("{}.{:011}", q / 100_000_000_000, q % 100_000_000_000)
}

/// The service a rendered rule belongs to, read back from its comment (`shop/web:80/tcp ...`).
pub fn service_of(rule: &str) -> Option<String> {
    let comment = crate::spec::comment(rule)?;
    let id = comment.split(' ').next()?;
    (id.contains(':') && !id.starts_with("iptproxy")).then(|| id.to_string())
}

#[cfg(test)]
mod tests;
