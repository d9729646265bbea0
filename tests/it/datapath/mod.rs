//! The data path: real TCP and UDP connections through the rules `iptproxy apply` writes,
//! across network namespaces joined by veth pairs. Rules that look right in iptables-save
//! can still send traffic nowhere; these tests prove they carry connections.
//!
//! ```text
//!                               outside client  198.18.100.2  2001:db8:0:100::2
//!                                      |        (the node's default route points here)
//!                                      | .1 ::1
//!  in-cluster client             +-----+-----+ .1 ::1
//!  198.19.10.2       ------------+   node    +------------ b1  198.19.1.2  2001:db8:1:1::2
//!  2001:db8:1:10::2       .1 ::1 |           +------------ b2  198.19.2.2  2001:db8:1:2::2
//!                                |           +------------ b3  198.19.3.2  2001:db8:1:3::2
//!                                +-----------+
//!              `iptproxy apply` runs here; forwarding on; FORWARD policy DROP
//! ```
//!
//! Every link is a /24 and a /64: the node is `.1`/`::1` on it, the other end `.2`/`::2` with
//! its default route via the node. `cluster_cidrs` ([`SETTINGS`]) holds 198.19.0.0/16 and
//! 2001:db8:1::/48: backends and the in-cluster client; the outside client is outside it.
//! VIPs are 198.18.0.N / 2001:db8::N and external IPs 198.18.1.N / 2001:db8:0:1::N: nobody
//! holds them, the clients' default routes bring them to the node, and only iptproxy's rules
//! make them answer. Backends b1-b3 listen on TCP and UDP port 8080 and answer every line or
//! datagram with `<their name> <the source address they saw>` ([`Answer`]).
//!
//! To add a case: write the services as TOML with `$placeholders` ([`topology::placeholder`]:
//! `$vip1`, `$ext1`, `$ep1`..`$ep3`, ...), then in a `fn(&Topology, Fam)`:
//! `t.apply(fam, &format!("{SETTINGS}{CONFIG}"))`, ask with
//! `t.cluster_client.tcp(at(vip(fam, 1), 80))` (or `outside_client`, a backend, `t.node()`),
//! and assert on the answer. Add the function to [`CASES`] and give it a `#[test]` that runs
//! it with [`on_nft`]. Each case runs for IPv4 and IPv6 on nft, and for IPv4 on legacy.

mod client;
mod server;
mod topology;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use client::{Answer, PATIENCE};
use topology::{FAMILIES, Fam, Host, SETTINGS, Topology, at, external_ip, vip};

/// Every case, for the run on the legacy backend.
const CASES: &[fn(&Topology, Fam)] = &[
    weighted_endpoints_share_connections_by_weight,
    masquerading_follows_the_client_and_the_policy,
    an_endpoint_reaches_its_own_service_through_the_vip,
    client_ip_affinity_pins_each_client_to_one_endpoint,
    node_ports_and_external_ips_reach_the_service,
    source_ranges_admit_listed_sources_and_drop_others,
    udp_services_answer,
    a_service_without_endpoints_refuses_connections_at_once,
    new_connections_follow_an_endpoint_change_while_established_ones_keep_working,
];

/// Runs `case` for IPv4 and IPv6 on the nf_tables backend, in a topology of its own.
fn on_nft(case: fn(&Topology, Fam)) {
    let t = Topology::new("nft");
    for fam in FAMILIES {
        case(&t, fam);
    }
}

#[test]
fn every_case_carries_ipv4_on_the_legacy_backend_too() {
    let t = Topology::new("legacy");
    for case in CASES {
        case(&t, Fam::V4);
    }
}

#[test]
fn the_topology_is_torn_down_even_when_a_test_panics() {
    let mut names = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = Topology::new("nft");
        names = t.namespaces();
        t.apply(Fam::V4, &format!("{SETTINGS}{WEIGHTED}"));
        panic!("a test fails with its topology up and running");
    }));
    assert!(outcome.is_err());
    assert_eq!(names.len(), 6);
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().expect("run ip netns list");
    let list = String::from_utf8_lossy(&out.stdout);
    let left: Vec<_> = names.iter().filter(|n| list.lines().any(|l| l.split(' ').next() == Some(n.as_str()))).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// How many answers came from each backend.
fn tally(answers: &[Answer]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(a.backend.as_str()).or_default() += 1;
    }
    counts
}

/// Waits until `condition` holds; panics, naming `what`, if it never does. The deadline is
/// far beyond what a working system needs: it only ends a test that has already failed.
#[track_caller]
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const WEIGHTED: &str = r#"
[[service]]
name = "web"
vip = "$vip1"
port = 80
endpoints = [{ address = "$b1", port = 8080, weight = 1 }, { address = "$b2", port = 8080, weight = 1 }, { address = "$b3", port = 8080, weight = 4 }]
"#;

#[test]
fn weighted_endpoints_share_connections_by_weight_v4_v6() {
    on_nft(weighted_endpoints_share_connections_by_weight);
}

/// Weights 1, 1, 4: shares 1/6, 1/6, 2/3. Over N = 300 connections each count is binomial,
/// with mean N*p and standard deviation sqrt(N*p*(1-p)): 50 +- 6.45 for b1 and b2, 200 +- 8.16
/// for b3. The bounds are the mean +- 5 standard deviations: [18, 82] and [160, 240]. A correct
/// cascade (probabilities 1/6, 1/5, rest) leaves them with probability 3.2e-6 (exact binomial
/// tails: 1.2e-6 for each of b1, b2, 7.6e-7 for b3). A plain 1/n cascade (1/3, 1/2, rest)
/// gives b3 a third, a mean of 100, and reaches 160 with probability 8.6e-13.
fn weighted_endpoints_share_connections_by_weight(t: &Topology, fam: Fam) {
    const N: usize = 300;
    t.apply(fam, &format!("{SETTINGS}{WEIGHTED}"));
    let answers = t.cluster_client.tcp_many(at(vip(fam, 1), 80), N);

    // Each connection came from a port of its own: each was a new conntrack entry, drawn anew.
    let sources: HashSet<SocketAddr> = answers.iter().map(|a| a.source).collect();
    assert_eq!(sources.len(), N, "{fam:?}: connections shared a source port");
    let counts = tally(&answers);
    for (backend, weight) in [("b1", 1.0), ("b2", 1.0), ("b3", 4.0)] {
        let p: f64 = weight / 6.0;
        let (mean, sd) = (N as f64 * p, (N as f64 * p * (1.0 - p)).sqrt());
        let bounds = (mean - 5.0 * sd).ceil() as usize..=(mean + 5.0 * sd).floor() as usize;
        let got = counts.get(backend).copied().unwrap_or(0);
        assert!(
            bounds.contains(&got),
            "{fam:?}: {backend} (weight {weight}) got {got} of {N}, not in {bounds:?}: {counts:?}"
        );
    }
}

const MASQUERADE: &str = r#"
[[service]]
name = "auto"
vip = "$vip1"
port = 80
endpoints = ["$ep1", "$ep2", "$ep3"]

[[service]]
name = "always"
vip = "$vip2"
port = 80
endpoints = ["$ep1", "$ep2", "$ep3"]
masquerade = "always"

[[service]]
name = "never"
vip = "$vip3"
port = 80
endpoints = ["$ep1", "$ep2", "$ep3"]
masquerade = "never"
"#;

/// Whose address a backend saw a connection come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// The client's own: not masqueraded.
    Own,
    /// The node's, on the backend's link: masqueraded.
    Node,
}

/// Where connections from `client` to `to` appear to come from, at every backend that
/// answered; panics on an address that is neither the client's nor the node's.
fn sources_seen(t: &Topology, fam: Fam, client: &Host, to: SocketAddr) -> BTreeSet<Source> {
    let answers = client.tcp_many(to, 6);
    let classify = |a: &Answer| match a.source.ip() {
        ip if ip == client.addr(fam) => Source::Own,
        ip if ip == t.backend(&a.backend).node_side(fam) => Source::Node,
        _ => panic!("{fam:?}: {} -> {to}: {a:?} has neither the client's nor the node's address", client.name),
    };
    answers.iter().map(classify).collect()
}

#[test]
fn masquerading_follows_the_client_and_the_policy_v4_v6() {
    on_nft(masquerading_follows_the_client_and_the_policy);
}

fn masquerading_follows_the_client_and_the_policy(t: &Topology, fam: Fam) {
    use Source::{Node, Own};
    let cases = [
        // masquerade_all, service, outside client seen as, in-cluster client seen as
        (false, 1, "auto", Node, Own),
        (false, 2, "always", Node, Node),
        (false, 3, "never", Own, Own),
        (true, 1, "auto", Node, Node),
        (true, 2, "always", Node, Node),
        (true, 3, "never", Own, Own),
    ];
    for (masquerade_all, n, service, outside, cluster) in cases {
        t.apply(fam, &format!("{SETTINGS}masquerade_all = {masquerade_all}\n{MASQUERADE}"));
        let to = at(vip(fam, n), 80);
        let context = format!("{fam:?}: masquerade_all = {masquerade_all}, service {service:?}");
        assert_eq!(sources_seen(t, fam, &t.outside_client, to), [outside].into(), "{context}, outside client");
        assert_eq!(sources_seen(t, fam, &t.cluster_client, to), [cluster].into(), "{context}, in-cluster client");
    }
}

const HAIRPIN: &str = r#"
[[service]]
name = "solo"
vip = "$vip1"
port = 80
endpoints = ["$ep1"]
masquerade = "never"

[[service]]
name = "all"
vip = "$vip2"
port = 80
endpoints = ["$ep1", "$ep2", "$ep3"]
"#;

#[test]
fn an_endpoint_reaches_its_own_service_through_the_vip_v4_v6() {
    on_nft(an_endpoint_reaches_its_own_service_through_the_vip);
}

/// Hairpin: the reply must come back through the node to be un-NATed, so the node
/// masquerades a connection that lands on its own client, whatever the service's policy.
fn an_endpoint_reaches_its_own_service_through_the_vip(t: &Topology, fam: Fam) {
    t.apply(fam, &format!("{SETTINGS}{HAIRPIN}"));
    let b1 = t.backend("b1");
    let a = b1.tcp(at(vip(fam, 1), 80));
    assert_eq!(a, Answer { backend: "b1".into(), source: SocketAddr::new(b1.node_side(fam), a.source.port()) });

    // 60 connections land on b1 itself with probability 1 - (2/3)^60 > 1 - 3e-11.
    let answers = b1.tcp_many(at(vip(fam, 2), 80), 60);
    assert!(answers.iter().any(|a| a.backend == "b1"), "{fam:?}: never landed on b1 itself: {:?}", tally(&answers));
    for a in answers {
        let expected = if a.backend == "b1" { b1.node_side(fam) } else { b1.addr(fam) };
        assert_eq!(a.source.ip(), expected, "{fam:?}: {a:?}");
    }
}

const AFFINITY: &str = r#"
[[service]]
name = "sticky"
vip = "$vip1"
port = 80
endpoints = ["$ep1", "$ep2", "$ep3"]
session_affinity = "client-ip"
"#;

#[test]
fn client_ip_affinity_pins_each_client_to_one_endpoint_v4_v6() {
    on_nft(client_ip_affinity_pins_each_client_to_one_endpoint);
}

/// Without affinity, 20 connections all reach the same one of 3 endpoints with probability
/// 3 * 3^-20 < 1e-9.
fn client_ip_affinity_pins_each_client_to_one_endpoint(t: &Topology, fam: Fam) {
    t.apply(fam, &format!("{SETTINGS}{AFFINITY}"));
    for client in [&t.cluster_client, &t.outside_client] {
        let answers = client.tcp_many(at(vip(fam, 1), 80), 20);
        assert_eq!(tally(&answers).len(), 1, "{fam:?}: {} reached {:?}", client.name, tally(&answers));
    }
}

const EXPOSED: &str = r#"
[[service]]
name = "web"
vip = "$vip1"
port = 80
endpoints = ["$ep1", "$ep2", "$ep3"]
node_port = 30080
external_ips = ["$ext1"]
"#;

#[test]
fn node_ports_and_external_ips_reach_the_service_v4_v6() {
    on_nft(node_ports_and_external_ips_reach_the_service);
}

/// Traffic that comes in by a node port or an external IP is masqueraded (its reply must
/// leave by the node), also from inside the cluster.
fn node_ports_and_external_ips_reach_the_service(t: &Topology, fam: Fam) {
    t.apply(fam, &format!("{SETTINGS}{EXPOSED}"));
    for client in [&t.outside_client, &t.cluster_client] {
        for to in [at(client.node_side(fam), 30080), at(external_ip(fam, 1), 80)] {
            let a = client.tcp(to);
            assert_eq!(a.source.ip(), t.backend(&a.backend).node_side(fam), "{fam:?}: {} -> {to}", client.name);
        }
    }
    // The node itself, through nat OUTPUT: by VIP, and by node port on its own address.
    for to in [at(vip(fam, 1), 80), at(t.outside_client.node_side(fam), 30080)] {
        let a = client::open(t.node(), to).and_then(|mut c| c.ask());
        assert!(a.is_ok(), "{fam:?}: node -> {to}: {a:?}");
    }
}

const GUARDED: &str = r#"
[[service]]
name = "guarded"
vip = "$vip1"
port = 80
endpoints = ["$ep1", "$ep2", "$ep3"]
external_ips = ["$ext1"]
source_ranges = ["$outside_net"]
"#;

#[test]
fn source_ranges_admit_listed_sources_and_drop_others_v4_v6() {
    on_nft(source_ranges_admit_listed_sources_and_drop_others);
}

/// A dropped connection is never waited for: the proof is that iptproxy's DROP rule counted
/// its SYN and no backend ever saw it.
fn source_ranges_admit_listed_sources_and_drop_others(t: &Topology, fam: Fam) {
    t.apply(fam, &format!("{SETTINGS}{GUARDED}"));
    let external = at(external_ip(fam, 1), 80);
    t.outside_client.tcp(external);
    // The ranges guard the external IPs only: the VIP stays open to the cluster.
    t.cluster_client.tcp(at(vip(fam, 1), 80));

    let (dropped, seen) = (t.dropped(fam), t.seen());
    let _syn = client::syn(&t.cluster_client.ns, external).expect("send a SYN");
    eventually(&format!("{fam:?}: iptproxy's DROP rule counts the SYN to {external}"), || t.dropped(fam) > dropped);
    assert_eq!(t.seen(), seen, "{fam:?}: a backend saw the connection from an unlisted source");
}

const UDP: &str = r#"
[[service]]
name = "dns"
protocol = "udp"
vip = "$vip1"
port = 53
endpoints = ["$ep1", "$ep2", "$ep3"]
"#;

#[test]
fn udp_services_answer_v4_v6() {
    on_nft(udp_services_answer);
}

/// 60 datagrams from fresh sockets miss one of 3 equal endpoints with probability
/// 3 * (2/3)^60 < 1e-10.
fn udp_services_answer(t: &Topology, fam: Fam) {
    t.apply(fam, &format!("{SETTINGS}{UDP}"));
    let answers = t.cluster_client.udp_many(at(vip(fam, 1), 53), 60);
    assert_eq!(tally(&answers).len(), 3, "{fam:?}: {:?}", tally(&answers));
    assert!(answers.iter().all(|a| a.source.ip() == t.cluster_client.addr(fam)), "{fam:?}: {answers:?}");
    for a in t.outside_client.udp_many(at(vip(fam, 1), 53), 5) {
        assert_eq!(a.source.ip(), t.backend(&a.backend).node_side(fam), "{fam:?}: outside client, {a:?}");
    }
}

const EMPTY: &str = r#"
[[service]]
name = "empty"
vip = "$vip1"
port = 443
external_ips = ["$ext1"]

[[service]]
name = "empty-udp"
protocol = "udp"
vip = "$vip2"
port = 53
endpoints = [{ address = "$b1", weight = 0 }]
"#;

#[test]
fn a_service_without_endpoints_refuses_connections_at_once_v4_v6() {
    on_nft(a_service_without_endpoints_refuses_connections_at_once);
}

/// Refused, not left to time out: without iptproxy's REJECT the packets would follow the
/// node's default route to a host that drops them, and the client would wait for
/// [`PATIENCE`] and get a timeout instead. (Over veth the REJECT's ICMP error can come back
/// while `connect` still holds its socket, so TCP only notes it; the retransmitted SYN, a
/// second later, then gets the error that refuses the connection.)
fn a_service_without_endpoints_refuses_connections_at_once(t: &Topology, fam: Fam) {
    t.apply(fam, &format!("{SETTINGS}{EMPTY}"));
    let refused = |who: &str, result: std::io::Result<Answer>| match result {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("{fam:?}: {who}: expected connection refused, got {other:?}"),
    };
    let (vip1, ext1) = (at(vip(fam, 1), 443), at(external_ip(fam, 1), 443));
    refused("in-cluster client -> VIP", t.cluster_client.try_tcp(vip1));
    refused("outside client -> external IP", t.outside_client.try_tcp(ext1));
    refused("node -> VIP", client::open(t.node(), vip1).and_then(|mut c| c.ask()));
    let udp = client::udp_many(&t.cluster_client.ns, at(vip(fam, 2), 53), 1).map(|mut a| a.remove(0));
    refused("in-cluster client -> drained UDP service", udp);
}

const BEFORE_CHANGE: &str = r#"
[[service]]
name = "web"
vip = "$vip1"
port = 80
endpoints = ["$ep1"]
"#;

const AFTER_CHANGE: &str = r#"
[[service]]
name = "web"
vip = "$vip1"
port = 80
endpoints = ["$ep2", "$ep3"]
"#;

#[test]
fn new_connections_follow_an_endpoint_change_while_established_ones_keep_working_v4_v6() {
    on_nft(new_connections_follow_an_endpoint_change_while_established_ones_keep_working);
}

/// 40 new connections miss one of 2 equal endpoints with probability 2 * 2^-40 < 2e-12.
fn new_connections_follow_an_endpoint_change_while_established_ones_keep_working(t: &Topology, fam: Fam) {
    let to = at(vip(fam, 1), 80);
    t.apply(fam, &format!("{SETTINGS}{BEFORE_CHANGE}"));
    let mut established: Vec<_> = [&t.cluster_client, &t.outside_client].map(|c| (c.name, c.open(to))).into();
    for (who, conn) in &mut established {
        assert_eq!(conn.ask().map(|a| a.backend).ok(), Some("b1".into()), "{fam:?}: {who}");
    }

    t.apply(fam, &format!("{SETTINGS}{AFTER_CHANGE}"));
    let answers = t.cluster_client.tcp_many(to, 40);
    assert_eq!(tally(&answers).into_keys().collect::<Vec<_>>(), ["b2", "b3"], "{fam:?}: new connections");
    for (who, conn) in &mut established {
        let a = conn.ask().unwrap_or_else(|e| panic!("{fam:?}: {who}'s established connection broke: {e}"));
        assert_eq!(a.backend, "b1", "{fam:?}: {who}");
    }
}
