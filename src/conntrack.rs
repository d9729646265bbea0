//! Stale UDP flows. Conntrack pins a UDP "flow" (client address and port to a destination) to
//! the decision its first packet got, for as long as packets keep coming. So after an apply:
//! flows DNAT'd to an endpoint that is gone would keep going there, a black hole; and flows to
//! a service address or node port that was not served before would keep bypassing the new
//! rules. Like kube-proxy, iptproxy deletes those conntrack entries; the next packet of each
//! flow then goes through the new rules. TCP and SCTP need nothing: their connections end.
//!
//! Derived from the plan itself, so it works for `apply`, `cleanup` and the daemon alike.

use crate::chains;
use crate::config::addr::parse_host_port;
use crate::plan::{Action, ChainPlan, Op, Plan};
use crate::ruleset::Family;
use crate::spec;

/// Conntrack entries to delete: `conntrack -D -f <family> <filter...>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub family: Family,
    pub filter: Vec<String>,
}

/// The UDP flows `plan`, once applied, leaves pointing the wrong way.
pub fn stale(plan: &Plan) -> Vec<Stale> {
    let mut out = Vec::new();
    for table in &plan.tables {
        stale_in(table.family, &table.table, table.chains.iter(), &mut out);
    }
    out
}

/// Adds to `out` the UDP flows that the changes `chains` of one table, once applied, leave
/// pointing the wrong way (only chain deletions and the shared chains matter).
pub fn stale_in<'a>(family: Family, table: &str, chains: impl Iterator<Item = &'a ChainPlan>, out: &mut Vec<Stale>) {
    if table != "nat" {
        return;
    }
    let mut push = |filter: Vec<String>| {
        let s = Stale { family, filter };
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for chain in chains {
        match chain.action {
            // An endpoint chain that goes: its UDP flows lose their destination.
            Action::Delete => {
                for rule in chain.before.iter().filter_map(|r| udp(r)) {
                    if let Some((addr, Some(port))) =
                        arg(&rule, "--to-destination").and_then(|d| parse_host_port(&d).ok())
                    {
                        push(args(&[
                            "-p",
                            "udp",
                            "--dst-nat",
                            "--reply-src",
                            &addr.to_string(),
                            "--reply-port-src",
                            &port.to_string(),
                        ]));
                    }
                }
            }
            // A service address or node port that starts being served.
            _ if chain.chain == chains::SERVICES || chain.chain == chains::NODEPORTS => {
                for rule in chain.ops.iter().filter_map(added).filter_map(|r| udp(r)) {
                    let Some(port) = arg(&rule, "--dport") else { continue };
                    match arg(&rule, "-d") {
                        Some(dest) => {
                            let addr = dest.split('/').next().unwrap_or(&dest).to_string();
                            push(args(&["-p", "udp", "--orig-dst", &addr, "--orig-port-dst", &port]));
                        }
                        None => push(args(&["-p", "udp", "--orig-port-dst", &port])),
                    }
                }
            }
            _ => {}
        }
    }
}

fn added(op: &Op) -> Option<&String> {
    match op {
        Op::Append { rule } | Op::Insert { rule, .. } | Op::Replace { rule, .. } => Some(rule),
        Op::Delete { .. } | Op::DeleteRule { .. } => None,
    }
}

/// The rule's arguments, when it is a UDP rule.
fn udp(rule: &str) -> Option<Vec<String>> {
    let args = spec::split(rule).ok()?;
    args.windows(2).any(|w| w[0] == "-p" && w[1] == "udp").then_some(args)
}

/// The value after `flag`, when not negated.
fn arg(args: &[String], flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a == flag)?;
    if at > 0 && args[at - 1] == "!" {
        return None;
    }
    args.get(at + 1).cloned()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_sources;
    use crate::render::render;
    use crate::ruleset::Ruleset;

    fn desired(toml: &str) -> Ruleset {
        render(&from_sources(vec![("a.toml".into(), toml.as_bytes().to_vec())]).unwrap())
    }

    const DNS: &str = "[[service]]\nname='dns'\nprotocol='udp'\nvip='198.18.0.53'\nport=53\nnode_port=30053\n";
    const WEB: &str = "[[service]]\nname='web'\nvip='198.18.0.80'\nport=80\n";

    fn filters(plan: &Plan) -> Vec<String> {
        stale(plan).iter().map(|s| format!("{:?} {}", s.family, s.filter.join(" "))).collect()
    }

    #[test]
    fn a_removed_udp_endpoint_loses_its_flows() {
        let before = desired(&format!("{DNS}endpoints=['198.19.0.5:5353', '198.19.0.6:5353']\n"));
        let after = desired(&format!("{DNS}endpoints=['198.19.0.6:5353']\n"));
        let plan = crate::plan::plan(&after, &before.as_live());
        assert_eq!(filters(&plan), ["Ipv4 -p udp --dst-nat --reply-src 198.19.0.5 --reply-port-src 5353"]);
    }

    #[test]
    fn a_udp_service_that_starts_being_served_loses_its_old_flows() {
        let before = desired(DNS);
        let after = desired(&format!("{DNS}endpoints=['[2001:db8:1::5]:53']\n").replace("198.18.0.53", "2001:db8::53"));
        let plan = crate::plan::plan(&after, &Ruleset::default());
        assert_eq!(
            filters(&plan),
            ["Ipv6 -p udp --orig-port-dst 30053", "Ipv6 -p udp --orig-dst 2001:db8::53 --orig-port-dst 53"]
        );
        assert!(filters(&crate::plan::plan(&before, &Ruleset::default())).is_empty(), "no endpoints, nothing served");
    }

    #[test]
    fn tcp_needs_nothing() {
        let before = desired(&format!("{WEB}endpoints=['198.19.0.5:80']\n"));
        let after = desired(&format!("{WEB}endpoints=['198.19.0.6:80']\n"));
        assert!(filters(&crate::plan::plan(&after, &before.as_live())).is_empty());
        assert!(filters(&crate::plan::plan(&Ruleset::default(), &before.as_live())).is_empty());
    }
}
