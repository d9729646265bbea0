//! One service's part of the rules: its own chains (`SVC`, `EXT`, `FW` and one `SEP` per
//! active endpoint, all in nat), and its rules in the shared chains (nat `SERVICES` and
//! `NODEPORTS`, filter `SERVICES`). Each piece renders alone, so that a change or a chain
//! read back from the kernel costs only what it touches; [`super::render`] is their assembly.

use std::fmt::Write;

use super::{Fam, comment};
use crate::chains::{self, endpoint_chain, service_chain};
use crate::config::addr::host_port;
use crate::config::{Endpoint, Masquerade, Service, Settings};
use crate::ruleset::{Chain, Rule};

/// One of a service's own chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Which {
    /// The endpoint chain of `endpoints[i]` (an active one).
    Sep(usize),
    Svc,
    Ext,
    Fw,
}

/// Which own chains the service has, in an order they can be created in (a chain before
/// any that jumps to it): endpoint chains, `SVC`, `EXT`, `FW`. No hashing, no rules.
pub fn which_chains(s: &Service) -> Vec<Which> {
    let mut which = Vec::new();
    if !has_endpoints(s) {
        return which;
    }
    which.extend(s.endpoints.iter().enumerate().filter(|(_, e)| e.weight > 0).map(|(i, _)| Which::Sep(i)));
    which.push(Which::Svc);
    if is_external(s) {
        which.push(Which::Ext);
    }
    if !s.source_ranges.is_empty() {
        which.push(Which::Fw);
    }
    which
}

/// The name of one of the service's own chains (a hash; see [`crate::chains`]).
pub fn chain_name(s: &Service, which: Which) -> String {
    match which {
        Which::Sep(i) => s.endpoints.get(i).map_or_else(String::new, |ep| endpoint_chain(s, ep)),
        Which::Svc => service_chain("SVC", s),
        Which::Ext => service_chain("EXT", s),
        Which::Fw => service_chain("FW", s),
    }
}

/// [`which_chains`] with their names.
pub fn chain_names(s: &Service) -> Vec<(Which, String)> {
    which_chains(s).into_iter().map(|w| (w, chain_name(s, w))).collect()
}

/// The service's own chains with their rules, in the order of [`which_chains`].
pub fn chains(settings: &Settings, s: &Service) -> Vec<(String, Chain)> {
    if !has_endpoints(s) {
        return Vec::new();
    }
    let r = Own::new(settings, s);
    // Each endpoint's chain name (a SHA-256) and comment, once: SVC and the SEP use them.
    let seps = r.seps();
    let mut out: Vec<(String, Chain)> = seps.iter().map(|sep| (sep.name.clone(), r.endpoint(sep))).collect();
    out.push((service_chain("SVC", s), r.balance(&seps)));
    if is_external(s) {
        out.push((service_chain("EXT", s), r.external()));
    }
    if !s.source_ranges.is_empty() {
        out.push((service_chain("FW", s), r.firewall()));
    }
    out
}

/// One of the service's own chains, alone; `None` when the service has no such chain.
pub fn chain(settings: &Settings, s: &Service, which: Which) -> Option<Chain> {
    if !has_endpoints(s) {
        return None;
    }
    let r = Own::new(settings, s);
    match which {
        Which::Sep(i) => {
            let ep = s.endpoints.get(i).filter(|e| e.weight > 0)?;
            Some(r.endpoint(&Sep::new(s, ep)))
        }
        Which::Svc => Some(r.balance(&r.seps())),
        Which::Ext => is_external(s).then(|| r.external()),
        Which::Fw => (!s.source_ranges.is_empty()).then(|| r.firewall()),
    }
}

/// The service's rules in nat `SERVICES`: its VIP and external IPs, when it has endpoints.
pub fn dispatch(s: &Service) -> Vec<Rule> {
    if !has_endpoints(s) {
        return Vec::new();
    }
    let f = Fam(s.family());
    let to = service_chain(if s.source_ranges.is_empty() { "EXT" } else { "FW" }, s);
    let mut rules =
        vec![Rule::new(format!("{} -j {}", f.dest_match(s, &s.vip, "cluster IP"), service_chain("SVC", s)))];
    for ip in &s.external_ips {
        rules.push(Rule::new(format!("{} -j {to}", f.dest_match(s, ip, "external IP"))));
    }
    rules
}

/// How many rules [`dispatch`] gives, without rendering them.
pub fn dispatch_len(s: &Service) -> usize {
    if has_endpoints(s) { 1 + s.external_ips.len() } else { 0 }
}

/// The service's rule in nat `NODEPORTS`, when it has endpoints and a node port.
pub fn node_port(s: &Service) -> Option<Rule> {
    let np = s.node_port.filter(|_| has_endpoints(s))?;
    let p = s.protocol.as_str();
    let c = comment(&format!("{} node port", s.id()));
    Some(Rule::new(format!("-p {p} {c} -m {p} --dport {np} -j {}", service_chain("EXT", s))))
}

/// How many rules [`node_port`] gives (0 or 1), without rendering it.
pub fn node_port_len(s: &Service) -> usize {
    usize::from(has_endpoints(s) && s.node_port.is_some())
}

/// The service's rules in filter `SERVICES`: when it has no endpoints, every way in is
/// refused at once (ICMP port unreachable) rather than left to time out.
pub fn rejects(s: &Service) -> Vec<Rule> {
    if has_endpoints(s) {
        return Vec::new();
    }
    let f = Fam(s.family());
    let reject = f.reject();
    let mut rules = Vec::new();
    for ip in std::iter::once(&s.vip).chain(&s.external_ips) {
        rules.push(Rule::new(format!("{} {reject}", f.dest_match(s, ip, "has no endpoints"))));
    }
    if let Some(np) = s.node_port {
        let p = s.protocol.as_str();
        let c = comment(&format!("{} has no endpoints", s.id()));
        rules.push(Rule::new(format!("-p {p} {c} -m addrtype --dst-type LOCAL -m {p} --dport {np} {reject}")));
    }
    rules
}

/// How many rules [`rejects`] gives, without rendering them.
pub fn rejects_len(s: &Service) -> usize {
    if has_endpoints(s) { 0 } else { 1 + s.external_ips.len() + usize::from(s.node_port.is_some()) }
}

/// Whether the service has an endpoint that takes traffic: only then does it get chains.
pub fn has_endpoints(s: &Service) -> bool {
    s.active_endpoints().next().is_some()
}

/// Traffic from outside (external IPs, node port) goes through `EXT`, which masquerades it.
fn is_external(s: &Service) -> bool {
    !s.external_ips.is_empty() || s.node_port.is_some()
}

/// An active endpoint with its chain's name and its rules' comment.
struct Sep<'a> {
    ep: &'a Endpoint,
    name: String,
    comment: String,
}

impl<'a> Sep<'a> {
    fn new(s: &Service, ep: &'a Endpoint) -> Sep<'a> {
        Sep {
            ep,
            name: endpoint_chain(s, ep),
            comment: comment(&format!("{} -> {}", s.id(), host_port(ep.addr, ep.port))),
        }
    }
}

/// Renders the own chains of one service.
struct Own<'a> {
    f: Fam,
    settings: &'a Settings,
    s: &'a Service,
}

impl<'a> Own<'a> {
    fn new(settings: &'a Settings, s: &'a Service) -> Own<'a> {
        Own { f: Fam(s.family()), settings, s }
    }

    fn seps(&self) -> Vec<Sep<'a>> {
        self.s.active_endpoints().map(|ep| Sep::new(self.s, ep)).collect()
    }

    /// `SVC-x`: masquerade decision, affinity, then the probability cascade.
    fn balance(&self, active: &[Sep]) -> Chain {
        let (s, family) = (self.s, self.f.0);
        let mut rules = Vec::new();
        let masq_target = match (s.masquerade, self.settings.masquerade_all) {
            (Masquerade::Always, _) | (Masquerade::Auto, true) => Some(chains::MARK_MASQ),
            (Masquerade::Auto, false) if self.settings.cluster_cidrs.iter().any(|c| c.family() == family) => {
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
                    self.f.recent_mask()
                ));
            }
        }
        let mut remaining: u64 = active.iter().map(|e| u64::from(e.ep.weight)).sum();
        for (i, Sep { ep, name: sep, comment: c }) in active.iter().enumerate() {
            if i + 1 == active.len() {
                rules.push(format!("{c} -j {sep}"));
            } else {
                let p = super::probability(u64::from(ep.weight), remaining);
                rules.push(format!("{c} -m statistic --mode random --probability {p} -j {sep}"));
            }
            remaining -= u64::from(ep.weight);
        }
        user(rules)
    }

    /// `SEP-y`: hairpin masquerade, then DNAT (remembering the client under affinity).
    fn endpoint(&self, Sep { ep, name: sep, comment: c }: &Sep) -> Chain {
        let s = self.s;
        let mut dnat = format!("-p {} {c}", s.protocol.as_str());
        if s.affinity_seconds.is_some() {
            write!(dnat, " -m recent --set --name {sep} --mask {} --rsource", self.f.recent_mask()).ok();
        }
        write!(dnat, " -j DNAT --to-destination {}", host_port(ep.addr, ep.port)).ok();
        user(vec![format!("-s {}{} {c} -j {}", ep.addr, self.f.host(), chains::MARK_MASQ), dnat])
    }

    /// `EXT-x`: traffic from outside is masqueraded (unless never), then balanced.
    fn external(&self) -> Chain {
        let s = self.s;
        let mut rules = Vec::new();
        if s.masquerade != Masquerade::Never {
            let c = comment(&format!("{} masquerade external traffic", s.id()));
            rules.push(format!("{c} -j {}", chains::MARK_MASQ));
        }
        rules.push(format!("{} -j {}", comment(&s.id()), service_chain("SVC", s)));
        user(rules)
    }

    /// `FW-x`: allowed sources go on to `EXT-x`; others are marked to be dropped.
    fn firewall(&self) -> Chain {
        let s = self.s;
        let ext = service_chain("EXT", s);
        let mut rules: Vec<String> = s
            .source_ranges
            .iter()
            .map(|range| format!("-s {range} {} -j {ext}", comment(&format!("{} allowed source", s.id()))))
            .collect();
        rules.push(format!("{} -j {}", comment(&format!("{} other sources denied", s.id())), chains::MARK_DROP));
        user(rules)
    }
}

fn user(specs: Vec<String>) -> Chain {
    Chain::user(specs.into_iter().map(Rule::new).collect())
}
