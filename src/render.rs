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

use std::fmt::Write;

use crate::chains::{self, endpoint_chain, service_chain};
use crate::config::addr::host_port;
use crate::config::{Config, Masquerade, Service, Settings};
use crate::ruleset::{Chain, Family, Hook, Placement, Rule, Ruleset, Table};
use crate::spec::quote;

/// Renders the whole desired ruleset: nat and filter for every family that has services.
pub fn render(config: &Config) -> Ruleset {
    let mut tables = Vec::new();
    for family in Family::ALL {
        let services: Vec<&Service> = config.services.iter().filter(|s| s.family() == family).collect();
        if services.is_empty() {
            continue;
        }
        let r = Renderer { family, settings: &config.settings };
        tables.push(r.nat(&services));
        tables.push(r.filter(&services));
    }
    Ruleset { tables }
}

struct Renderer<'a> {
    family: Family,
    settings: &'a Settings,
}

/// Rules of one chain, built in order.
#[derive(Default)]
struct Rules(Vec<Rule>);

impl Rules {
    fn push(&mut self, spec: String) {
        self.0.push(Rule::new(spec));
    }

    fn chain(self) -> Chain {
        Chain::user(self.0)
    }
}

fn comment(text: &str) -> String {
    format!("-m comment --comment {}", quote(text))
}

impl Renderer<'_> {
    fn host(&self) -> &'static str {
        match self.family {
            Family::Ipv4 => "/32",
            Family::Ipv6 => "/128",
        }
    }

    fn loopback(&self) -> &'static str {
        match self.family {
            Family::Ipv4 => "127.0.0.0/8",
            Family::Ipv6 => "::1/128",
        }
    }

    fn reject(&self) -> &'static str {
        match self.family {
            Family::Ipv4 => "-j REJECT --reject-with icmp-port-unreachable",
            Family::Ipv6 => "-j REJECT --reject-with icmp6-port-unreachable",
        }
    }

    fn recent_mask(&self) -> &'static str {
        match self.family {
            Family::Ipv4 => "255.255.255.255",
            Family::Ipv6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        }
    }

    /// `-d VIP/32 -p tcp -m comment --comment "..." -m tcp --dport 80`: the canonical order
    /// puts address and protocol first, then matches in the order given.
    fn dest_match(&self, s: &Service, addr: &std::net::IpAddr, port: u16, note: &str) -> String {
        let p = s.protocol.as_str();
        format!("-d {addr}{} -p {p} {} -m {p} --dport {port}", self.host(), comment(&format!("{} {note}", s.id())))
    }

    fn nat(&self, services: &[&Service]) -> Table {
        let mut t = Table::new(self.family, "nat");
        let masq = format!("{:#x}", self.settings.masquerade_mark());
        let mut dispatch = Rules::default();
        let mut nodeports = Rules::default();
        for s in services.iter().filter(|s| s.active_endpoints().next().is_some()) {
            let svc = service_chain("SVC", s);
            let ext = service_chain("EXT", s);
            let fw = service_chain("FW", s);
            dispatch.push(format!("{} -j {svc}", self.dest_match(s, &s.vip, s.port, "cluster IP")));
            let external = !s.external_ips.is_empty() || s.node_port.is_some();
            for ip in &s.external_ips {
                let to = if s.source_ranges.is_empty() { &ext } else { &fw };
                dispatch.push(format!("{} -j {to}", self.dest_match(s, ip, s.port, "external IP")));
            }
            if let Some(np) = s.node_port {
                let p = s.protocol.as_str();
                let c = comment(&format!("{} node port", s.id()));
                nodeports.push(format!("-p {p} {c} -m {p} --dport {np} -j {ext}"));
            }
            if !s.source_ranges.is_empty() {
                let mut rules = Rules::default();
                for range in &s.source_ranges {
                    rules.push(format!("-s {range} {} -j {ext}", comment(&format!("{} allowed source", s.id()))));
                }
                rules.push(format!(
                    "{} -j {}",
                    comment(&format!("{} other sources denied", s.id())),
                    chains::MARK_DROP
                ));
                t.chains.insert(fw, rules.chain());
            }
            if external {
                let mut rules = Rules::default();
                if s.masquerade != Masquerade::Never {
                    let c = comment(&format!("{} masquerade external traffic", s.id()));
                    rules.push(format!("{c} -j {}", chains::MARK_MASQ));
                }
                rules.push(format!("{} -j {svc}", comment(&s.id())));
                t.chains.insert(ext, rules.chain());
            }
            // Each endpoint's chain name (a SHA-256) and comment, once: both chains use them.
            let seps: Vec<Sep> = s
                .active_endpoints()
                .map(|ep| Sep { ep, name: endpoint_chain(s, ep), comment: endpoint_comment(s, ep) })
                .collect();
            t.chains.insert(svc, self.service_chain(s, &seps));
            for sep in seps {
                let chain = self.endpoint_chain(s, &sep);
                t.chains.insert(sep.name, chain);
            }
        }
        if !nodeports.0.is_empty() {
            let c = comment("iptproxy node ports; must be the last rule");
            dispatch.push(format!(
                "! -d {} {c} -m addrtype --dst-type LOCAL -j {}",
                self.loopback(),
                chains::NODEPORTS
            ));
            t.chains.insert(chains::NODEPORTS.into(), nodeports.chain());
        }
        t.chains.insert(chains::SERVICES.into(), dispatch.chain());

        let cidrs: Vec<_> = self.settings.cluster_cidrs.iter().filter(|c| c.family() == self.family).collect();
        if !cidrs.is_empty() {
            let mut rules = Rules::default();
            for cidr in cidrs {
                rules.push(format!("-s {cidr} -j RETURN"));
            }
            let c = comment("masquerade traffic from outside cluster_cidrs");
            rules.push(format!("{c} -j {}", chains::MARK_MASQ));
            t.chains.insert(chains::MARK_OUTSIDE.into(), rules.chain());
        }
        let mark = |m: u32| Chain::user(vec![Rule::new(format!("-j MARK --set-xmark {m:#x}/{m:#x}"))]);
        t.chains.insert(chains::MARK_MASQ.into(), mark(self.settings.masquerade_mark()));
        t.chains.insert(chains::MARK_DROP.into(), mark(self.settings.drop_mark()));
        let random = if self.settings.random_fully { " --random-fully" } else { "" };
        let post = Rules(vec![
            Rule::new(format!("-m mark ! --mark {masq}/{masq} -j RETURN")),
            Rule::new(format!("-j MARK --set-xmark {masq}/0x0")),
            Rule::new(format!("{} -j MASQUERADE{random}", comment("iptproxy service traffic requiring SNAT"))),
        ]);
        t.chains.insert(chains::POSTROUTING.into(), post.chain());
        t.chains.insert(chains::CANARY.into(), canary());

        let portals = format!("{} -j {}", comment("iptproxy service portals"), chains::SERVICES);
        t.hooks = vec![
            hook("PREROUTING", portals.clone(), Placement::First),
            hook("OUTPUT", portals, Placement::First),
            hook(
                "POSTROUTING",
                format!("{} -j {}", comment("iptproxy postrouting rules"), chains::POSTROUTING),
                Placement::First,
            ),
        ];
        t
    }

    /// `SVC-x`: masquerade decision, affinity, then the probability cascade.
    fn service_chain(&self, s: &Service, active: &[Sep]) -> Chain {
        let mut rules = Rules::default();
        let masq_target = match (s.masquerade, self.settings.masquerade_all) {
            (Masquerade::Always, _) | (Masquerade::Auto, true) => Some(chains::MARK_MASQ),
            (Masquerade::Auto, false) if self.settings.cluster_cidrs.iter().any(|c| c.family() == self.family) => {
                Some(chains::MARK_OUTSIDE)
            }
            _ => None,
        };
        if let Some(target) = masq_target {
            rules.push(format!("{} -j {target}", comment(&format!("{} masquerade", s.id()))));
        }
        // Endpoints go from the last listed to the first: a cascade rule's probability
        // depends only on the endpoints after it, so an endpoint appended to the list (the
        // usual edit) is one rule inserted at the top, and no other rule changes.
        let active: Vec<&Sep> = active.iter().rev().collect();
        if let Some(seconds) = s.affinity_seconds {
            for Sep { name: sep, comment: c, .. } in &active {
                rules.push(format!(
                    "{c} -m recent --rcheck --seconds {seconds} --reap --name {sep} --mask {} --rsource -j {sep}",
                    self.recent_mask()
                ));
            }
        }
        let mut remaining: u64 = active.iter().map(|e| u64::from(e.ep.weight)).sum();
        for (i, Sep { ep, name: sep, comment: c }) in active.iter().enumerate() {
            if i + 1 == active.len() {
                rules.push(format!("{c} -j {sep}"));
            } else {
                let p = probability(u64::from(ep.weight), remaining);
                rules.push(format!("{c} -m statistic --mode random --probability {p} -j {sep}"));
            }
            remaining -= u64::from(ep.weight);
        }
        rules.chain()
    }

    /// `SEP-y`: hairpin masquerade, then DNAT (remembering the client under affinity).
    fn endpoint_chain(&self, s: &Service, Sep { ep, name: sep, comment: c }: &Sep) -> Chain {
        let mut dnat = format!("-p {} {c}", s.protocol.as_str());
        if s.affinity_seconds.is_some() {
            write!(dnat, " -m recent --set --name {sep} --mask {} --rsource", self.recent_mask()).ok();
        }
        write!(dnat, " -j DNAT --to-destination {}", host_port(ep.addr, ep.port)).ok();
        Rules(vec![Rule::new(format!("-s {}{} {c} -j {}", ep.addr, self.host(), chains::MARK_MASQ)), Rule::new(dnat)])
            .chain()
    }

    fn filter(&self, services: &[&Service]) -> Table {
        let mut t = Table::new(self.family, "filter");
        let mut rejects = Rules::default();
        for s in services.iter().filter(|s| s.active_endpoints().next().is_none()) {
            let reject = self.reject();
            rejects.push(format!("{} {reject}", self.dest_match(s, &s.vip, s.port, "has no endpoints")));
            for ip in &s.external_ips {
                rejects.push(format!("{} {reject}", self.dest_match(s, ip, s.port, "has no endpoints")));
            }
            if let Some(np) = s.node_port {
                let p = s.protocol.as_str();
                let c = comment(&format!("{} has no endpoints", s.id()));
                rejects.push(format!("-p {p} {c} -m addrtype --dst-type LOCAL -m {p} --dport {np} {reject}"));
            }
        }
        t.chains.insert(chains::SERVICES.into(), rejects.chain());
        let drop = format!("{:#x}", self.settings.drop_mark());
        let firewall =
            format!("{} -m mark --mark {drop}/{drop} -j DROP", comment("iptproxy: drop packets denied by policy"));
        t.chains.insert(chains::FIREWALL.into(), Rules(vec![Rule::new(firewall)]).chain());
        t.chains.insert(chains::CANARY.into(), canary());

        let fw = format!("{} -j {}", comment("iptproxy firewall for denied packets"), chains::FIREWALL);
        let portals =
            format!("-m conntrack --ctstate NEW {} -j {}", comment("iptproxy service portals"), chains::SERVICES);
        for builtin in ["INPUT", "FORWARD", "OUTPUT"] {
            t.hooks.push(hook(builtin, fw.clone(), Placement::First));
            t.hooks.push(hook(builtin, portals.clone(), Placement::First));
        }
        if self.settings.forward_accept {
            let masq = format!("{:#x}", self.settings.masquerade_mark());
            let rules = Rules(vec![
                Rule::new(format!(
                    "{} -m mark --mark {masq}/{masq} -j ACCEPT",
                    comment("iptproxy: forward service traffic marked for masquerade")
                )),
                Rule::new(format!(
                    "{} -m conntrack --ctstate DNAT -j ACCEPT",
                    comment("iptproxy: forward connections to service endpoints")
                )),
            ]);
            t.chains.insert(chains::FORWARD.into(), rules.chain());
            let c = comment("iptproxy forwarding rules");
            t.hooks.push(hook("FORWARD", format!("{c} -j {}", chains::FORWARD), Placement::Last));
        }
        t
    }
}

fn canary() -> Chain {
    Chain::user(vec![Rule::new(chains::CANARY_RULE)])
}

fn hook(chain: &str, spec: String, placement: Placement) -> Hook {
    Hook { chain: chain.into(), spec, placement }
}

/// An active endpoint with its chain's name and its rules' comment.
struct Sep<'a> {
    ep: &'a crate::config::Endpoint,
    name: String,
    comment: String,
}

fn endpoint_comment(s: &Service, ep: &crate::config::Endpoint) -> String {
    comment(&format!("{} -> {}", s.id(), host_port(ep.addr, ep.port)))
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
