//! `iptproxy status`: what the daemon did last (its state file), and how traffic spreads
//! over services and endpoints, read from the counters of our own rules.
//!
//! nat rules see the first packet of each connection only (conntrack handles the rest),
//! so a service's entry rules count its new connections and an endpoint's DNAT rule counts
//! the connections sent to it.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::Result;
use serde::Serialize;

use crate::backend::{Backend, Choice};
use crate::chains;
use crate::cli::{self, Global};
use crate::config;
use crate::daemon::state::{self, State, ago, unix};
use crate::exec::System;
use crate::reconcile;
use crate::ruleset::{Counters, Family, Table};
use crate::spec;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceTraffic {
    /// `name:port/protocol`.
    pub service: String,
    pub family: Family,
    /// The virtual IP, when the service has endpoints (and so a cluster IP rule).
    pub address: Option<String>,
    /// New connections through every way in: cluster IP, external IPs, node port.
    pub connections: Counters,
    /// Connections refused because the service has no endpoints.
    pub rejected: Option<Counters>,
    pub endpoints: Vec<EndpointTraffic>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointTraffic {
    pub endpoint: String,
    pub connections: Counters,
}

/// The traffic of every service whose rules are in `tables` (read with counters).
pub fn traffic(tables: &[Table]) -> Vec<ServiceTraffic> {
    let mut services: BTreeMap<(String, Family), ServiceTraffic> = BTreeMap::new();
    for t in tables {
        for (name, chain) in t.chains.iter().filter(|(n, _)| chains::is_ours(n)) {
            for rule in &chain.rules {
                let Some(comment) = spec::comment(&rule.spec) else { continue };
                let counters = rule.counters.unwrap_or_default();
                if t.name == "nat" && (name == chains::SERVICES || name == chains::NODEPORTS) {
                    let way_in = [" cluster IP", " external IP", " node port"];
                    let Some((id, way)) = way_in.iter().find_map(|w| Some((comment.strip_suffix(w)?, *w))) else {
                        continue;
                    };
                    let s = service(&mut services, id, t.family);
                    add(&mut s.connections, counters);
                    if way == " cluster IP" {
                        s.address = destination(&rule.spec);
                    }
                } else if t.name == "nat" && name.starts_with("IPTPROXY-SEP-") && rule.spec.contains("-j DNAT") {
                    let Some((id, endpoint)) = comment.split_once(" -> ") else { continue };
                    let s = service(&mut services, id, t.family);
                    s.endpoints.push(EndpointTraffic { endpoint: endpoint.to_string(), connections: counters });
                } else if t.name == "filter" && name == chains::SERVICES {
                    let Some(id) = comment.strip_suffix(" has no endpoints") else { continue };
                    let s = service(&mut services, id, t.family);
                    add(s.rejected.get_or_insert_with(Counters::default), counters);
                }
            }
        }
    }
    let mut out: Vec<ServiceTraffic> = services.into_values().collect();
    for s in &mut out {
        s.endpoints.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    }
    out
}

fn service<'a>(
    services: &'a mut BTreeMap<(String, Family), ServiceTraffic>,
    id: &str,
    family: Family,
) -> &'a mut ServiceTraffic {
    services.entry((id.to_string(), family)).or_insert_with(|| ServiceTraffic {
        service: id.to_string(),
        family,
        address: None,
        connections: Counters::default(),
        rejected: None,
        endpoints: Vec::new(),
    })
}

fn add(sum: &mut Counters, c: Counters) {
    sum.packets += c.packets;
    sum.bytes += c.bytes;
}

/// The `-d` address of a rule, without the host prefix length.
fn destination(rule: &str) -> Option<String> {
    let args = spec::split(rule).ok()?;
    let at = args.iter().position(|a| a == "-d")?;
    let addr = args.get(at + 1)?;
    Some(addr.trim_end_matches("/32").trim_end_matches("/128").to_string())
}

/// The daemon as the state file shows it.
#[derive(Debug, Serialize)]
pub struct Daemon {
    pub running: bool,
    pub state: Option<State>,
    /// Why there is no state, when there is none.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    daemon: Daemon,
    services: Vec<ServiceTraffic>,
}

/// Exit codes, as monitoring reads them: 0 running and in sync; 2 running with a problem
/// (invalid config, failing apply); 3 not running or no state; 1 the command itself failed.
pub fn run(global: &Global, json: bool) -> Result<u8> {
    let daemon = match state::read(&global.state_file) {
        Ok(s) => Daemon { running: alive(s.pid), state: Some(s), error: None },
        Err(e) => Daemon { running: false, state: None, error: Some(e.to_string()) },
    };
    // The daemon's backend, unless one is chosen: the counters are where its rules are.
    let backend = match (global.backend, daemon.state.as_ref().map(|s| s.backend.as_str())) {
        (Choice::Auto, Some("nft")) => Some(Backend::Nft),
        (Choice::Auto, Some("legacy")) => Some(Backend::Legacy),
        _ => None,
    };
    let lock_wait = config::load_dir(&global.config_dir).unwrap_or_default().settings.lock_wait;
    let runner = match backend {
        Some(b) => System::new(b, lock_wait),
        None => cli::runner(global, &config::Config::default())?,
    };
    let mut tables = Vec::new();
    for family in Family::ALL {
        match reconcile::read_family(&runner, family, true) {
            Ok(t) => tables.extend(t),
            Err(e) if family == Family::Ipv6 => log::warn!("skipping IPv6: {e}"),
            Err(e) => return Err(anyhow::Error::new(e).context("reading the rules' counters")),
        }
    }
    let report = Report { daemon, services: traffic(&tables) };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report.daemon, &report.services, unix(std::time::SystemTime::now())));
    }
    Ok(match &report.daemon {
        Daemon { running: true, state: Some(s), .. } if s.config_error.is_none() && s.apply_error.is_none() => 0,
        Daemon { running: true, .. } => 2,
        _ => 3,
    })
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn text(daemon: &Daemon, services: &[ServiceTraffic], now: u64) -> String {
    let mut out = String::new();
    let when = |at: u64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
        format!("{} ({} ago)", humantime::format_rfc3339_seconds(t), ago(at, now))
    };
    match &daemon.state {
        Some(s) => {
            let running = if daemon.running { "running" } else { "NOT running" };
            let _ = writeln!(
                out,
                "iptproxyd: {running} (pid {}), iptables-{}, config {}",
                s.pid,
                s.backend,
                s.config_dir.display()
            );
            let _ = writeln!(out, "  status:       {}", s.status);
            let _ = writeln!(out, "  started:      {}", when(s.started));
            if let Some(a) = &s.last_apply {
                let _ = writeln!(out, "  last change:  {}, {}: {} rule changes", when(a.at), a.reason, a.changes());
            }
            if let Some(at) = s.last_full_sync {
                let _ = writeln!(out, "  last resync:  {}", when(at));
            }
            if let Some(e) = &s.config_error {
                let _ =
                    writeln!(out, "  config error: since {}\n    {}", when(e.at), e.message.replace('\n', "\n    "));
            }
            if let Some(f) = &s.apply_error {
                let _ = writeln!(
                    out,
                    "  apply error:  since {}, {} attempts, next in {}\n    {}",
                    when(f.since),
                    f.attempts,
                    ago(now, f.retry_at),
                    f.message.replace('\n', "\n    ")
                );
            }
            if let Some(hit) = &s.last_canary_hit {
                let _ =
                    writeln!(out, "  repaired:     {} times; last {}: {}", s.canary_hits, when(hit.at), hit.message);
            }
        }
        None => {
            let _ = writeln!(out, "iptproxyd: no state ({})", daemon.error.as_deref().unwrap_or("unknown"));
        }
    }
    out.push('\n');
    if services.is_empty() {
        out.push_str("No iptproxy service rules are present.\n");
        return out;
    }
    let _ = writeln!(out, "{:<44} {:>12} {:>10} {:>6}", "SERVICE / ENDPOINT", "CONNECTIONS", "BYTES", "SHARE");
    for s in services {
        let head = match &s.address {
            Some(a) => format!("{} {a}", s.service),
            None => s.service.clone(),
        };
        let _ = writeln!(out, "{head:<44} {:>12} {:>10}", s.connections.packets, bytes(s.connections.bytes));
        let total: u64 = s.endpoints.iter().map(|e| e.connections.packets).sum();
        for e in &s.endpoints {
            let share = match total {
                0 => "-".to_string(),
                t => format!("{}%", (e.connections.packets * 100 + t / 2) / t),
            };
            let c = e.connections;
            let _ = writeln!(out, "  -> {:<40} {:>12} {:>10} {share:>6}", e.endpoint, c.packets, bytes(c.bytes));
        }
        if let Some(r) = s.rejected {
            let _ = writeln!(out, "  (no endpoints: {} connections refused)", r.packets);
        }
    }
    out.push_str("\nConnections are counted at their first packet, since the rules were created.\n");
    out
}

/// `512 B`, `1.5 KiB`, `3.0 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::save::Parser;

    const SAVE: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:IPTPROXY-SERVICES - [0:0]
:IPTPROXY-NODEPORTS - [0:0]
:IPTPROXY-SVC-A - [0:0]
:IPTPROXY-SEP-1 - [0:0]
:IPTPROXY-SEP-2 - [0:0]
:DOCKER - [0:0]
[10:600] -A PREROUTING -m comment --comment "iptproxy service portals" -j IPTPROXY-SERVICES
[7:420] -A IPTPROXY-SERVICES -d 198.18.0.10/32 -p tcp -m comment --comment "shop/web:80/tcp cluster IP" -m tcp --dport 80 -j IPTPROXY-SVC-A
[1:60] -A IPTPROXY-SERVICES -d 198.18.1.1/32 -p tcp -m comment --comment "shop/web:80/tcp external IP" -m tcp --dport 80 -j IPTPROXY-EXT-A
[2:120] -A IPTPROXY-NODEPORTS -p tcp -m comment --comment "shop/web:80/tcp node port" -m tcp --dport 30080 -j IPTPROXY-EXT-A
[4:240] -A IPTPROXY-SVC-A -m comment --comment "shop/web:80/tcp -> 198.19.0.2:8080" -m statistic --mode random --probability 0.50000000000 -j IPTPROXY-SEP-1
[3:180] -A IPTPROXY-SEP-1 -s 198.19.0.2/32 -m comment --comment "shop/web:80/tcp -> 198.19.0.2:8080" -j IPTPROXY-MARK-MASQ
[4:240] -A IPTPROXY-SEP-1 -p tcp -m comment --comment "shop/web:80/tcp -> 198.19.0.2:8080" -j DNAT --to-destination 198.19.0.2:8080
[6:360] -A IPTPROXY-SEP-2 -p tcp -m comment --comment "shop/web:80/tcp -> 198.19.0.4:8080" -j DNAT --to-destination 198.19.0.4:8080
[9:9] -A DOCKER -m comment --comment "shop/web:80/tcp cluster IP" -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:IPTPROXY-SERVICES - [0:0]
[5:300] -A IPTPROXY-SERVICES -d 198.18.0.99/32 -p tcp -m comment --comment "empty:443/tcp has no endpoints" -m tcp --dport 443 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"#;

    fn tables() -> Vec<Table> {
        let mut p = Parser::new(Family::Ipv4);
        for line in SAVE.lines() {
            p.line(line).unwrap();
        }
        p.finish().unwrap()
    }

    #[test]
    fn counts_each_service_by_its_ways_in_and_each_endpoint_by_its_dnat() {
        let t = traffic(&tables());
        assert_eq!(t.len(), 2, "{t:#?}");
        let web = &t[1];
        assert_eq!(web.service, "shop/web:80/tcp");
        assert_eq!(web.address.as_deref(), Some("198.18.0.10"));
        assert_eq!(web.connections, Counters { packets: 10, bytes: 600 }, "cluster IP + external IP + node port");
        let eps: Vec<_> = web.endpoints.iter().map(|e| (e.endpoint.as_str(), e.connections.packets)).collect();
        assert_eq!(eps, [("198.19.0.2:8080", 4), ("198.19.0.4:8080", 6)], "the hairpin rule is not counted");
        let empty = &t[0];
        assert_eq!(empty.service, "empty:443/tcp");
        assert_eq!(empty.rejected, Some(Counters { packets: 5, bytes: 300 }));
    }

    #[test]
    fn the_table_shows_shares_per_endpoint() {
        let daemon = Daemon { running: false, state: None, error: Some("no state file".into()) };
        let out = text(&daemon, &traffic(&tables()), 0);
        assert!(out.starts_with("iptproxyd: no state (no state file)\n"), "{out}");
        let line = out.lines().find(|l| l.contains("198.19.0.4:8080")).unwrap();
        assert!(line.ends_with("6      360 B    60%"), "{line:?}");
        assert!(out.contains("(no endpoints: 5 connections refused)"), "{out}");
    }

    #[test]
    fn bytes_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
