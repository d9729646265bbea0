//! The topology of the data-path tests (pictured in the module doc): namespaces, veth links,
//! addresses, routes, the backends' servers, and the config iptproxy applies in the node.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;

use super::client::{self, Answer, Conversation};
use super::server::Server;
use crate::harness::{Bench, Netns};

/// An address family; every case runs in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

pub const FAMILIES: [Fam; 2] = [Fam::V4, Fam::V6];

/// The port every backend listens on, TCP and UDP.
pub const BACKEND_PORT: u16 = 8080;

/// Zones of the address plan: outside the cluster, and inside `cluster_cidrs`.
const OUTSIDE: u8 = 0;
const CLUSTER: u8 = 1;

/// The `[settings]` every case starts from: backends and the in-cluster client live in
/// `cluster_cidrs`, the outside client does not.
pub const SETTINGS: &str = "[settings]\ncluster_cidrs = [\"198.19.0.0/16\", \"2001:db8:1::/48\"]\n\n";

/// One address of the plan: `198.<18+zone>.<net>.<host>` in IPv4, and the same digits in
/// IPv6, `2001:db8:<zone>:<net>::<host>`, so `198.19.10.2` and `2001:db8:1:10::2` are the
/// same host.
pub fn address(fam: Fam, zone: u8, net: u8, host: u8) -> IpAddr {
    // The decimal digits read as hex, so IPv6 addresses print like their IPv4 twins.
    let digits = |n: u8| u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits");
    match fam {
        Fam::V4 => Ipv4Addr::new(198, 18 + zone, net, host).into(),
        Fam::V6 => Ipv6Addr::new(0x2001, 0xdb8, digits(zone), digits(net), 0, 0, 0, digits(host)).into(),
    }
}

/// Virtual IP number `n`: `198.18.0.n`, `2001:db8::n`. Nothing holds it; rules make it work.
pub fn vip(fam: Fam, n: u8) -> IpAddr {
    address(fam, OUTSIDE, 0, n)
}

/// External IP number `n`: `198.18.1.n`, `2001:db8:0:1::n`. Routed to the node by the
/// clients' default routes, held by no one.
pub fn external_ip(fam: Fam, n: u8) -> IpAddr {
    address(fam, OUTSIDE, 1, n)
}

pub fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A namespace joined to the node by one veth link (`eth0` here, `to-<name>` in the node).
pub struct Host {
    pub name: &'static str,
    pub ns: Netns,
    zone: u8,
    net: u8,
}

impl Host {
    fn new(name: &'static str, zone: u8, net: u8) -> Host {
        Host { name, ns: Netns::new(), zone, net }
    }

    /// This host's own address.
    pub fn addr(&self, fam: Fam) -> IpAddr {
        address(fam, self.zone, self.net, 2)
    }

    /// The node's address on this host's link: this host's gateway, and the source this
    /// host sees on traffic the node masqueraded towards it.
    pub fn node_side(&self, fam: Fam) -> IpAddr {
        address(fam, self.zone, self.net, 1)
    }

    /// One TCP connection, one question; panics if it gets no answer.
    #[track_caller]
    pub fn tcp(&self, to: SocketAddr) -> Answer {
        self.answered("tcp", to, self.try_tcp(to))
    }

    pub fn try_tcp(&self, to: SocketAddr) -> io::Result<Answer> {
        client::open(&self.ns, to)?.ask()
    }

    #[track_caller]
    pub fn tcp_many(&self, to: SocketAddr, n: usize) -> Vec<Answer> {
        self.answered("tcp", to, client::tcp_many(&self.ns, to, n))
    }

    #[track_caller]
    pub fn udp_many(&self, to: SocketAddr, n: usize) -> Vec<Answer> {
        self.answered("udp", to, client::udp_many(&self.ns, to, n))
    }

    #[track_caller]
    pub fn open(&self, to: SocketAddr) -> Conversation {
        self.answered("tcp", to, client::open(&self.ns, to))
    }

    #[track_caller]
    fn answered<T>(&self, protocol: &str, to: SocketAddr, result: io::Result<T>) -> T {
        match result {
            Ok(answer) => answer,
            Err(e) => panic!("{} -> {protocol} {to}: {e}", self.name),
        }
    }
}

/// The whole topology. Dropping it stops the servers and deletes every namespace (and with
/// them the links), also when a test panics.
pub struct Topology {
    /// The node: its namespace, where `iptproxy apply` runs, and the config directory.
    pub bench: Bench,
    pub outside_client: Host,
    pub cluster_client: Host,
    pub backends: Vec<Host>,
    servers: Vec<Server>,
}

impl Topology {
    /// Builds the topology, with iptproxy to use iptables `backend` (`nft` or `legacy`).
    pub fn new(backend: &'static str) -> Topology {
        let bench = Bench::new(backend);
        let outside_client = Host::new("outside", OUTSIDE, 100);
        let cluster_client = Host::new("cluster", CLUSTER, 10);
        let backends: Vec<Host> =
            [("b1", 1), ("b2", 2), ("b3", 3)].map(|(name, net)| Host::new(name, CLUSTER, net)).into();

        // No duplicate address detection, for link-local addresses too: usable at once, not
        // after a second or two in which neighbour discovery stalls.
        for ns in [&bench.ns, &outside_client.ns, &cluster_client.ns].into_iter().chain(backends.iter().map(|b| &b.ns))
        {
            sysctl(ns, "net.ipv6.conf.default.accept_dad", "0");
        }
        let node = &bench.ns.name;
        // No ICMP redirects from the node; set before its links exist, as a link's own setting
        // counts too. Traffic to an external IP from the outside client leaves by the link it
        // came in on, and the redirect the kernel would send first uses up the client's ICMP
        // rate limit: the port-unreachable of a REJECT would then never be sent.
        sysctl(&bench.ns, "net.ipv4.conf.all.send_redirects", "0");
        sysctl(&bench.ns, "net.ipv4.conf.default.send_redirects", "0");
        let mut script = String::new();
        for host in [&outside_client, &cluster_client].into_iter().chain(&backends) {
            let (peer, link) = (&host.ns.name, format!("to-{}", host.name));
            script += &format!("ip link add {link} netns {node} type veth peer name eth0 netns {peer}\n");
            script += &format!("ip -n {node} link set {link} up\nip -n {peer} link set eth0 up\n");
            for fam in FAMILIES {
                let (len, nodad) = if fam == Fam::V4 { (24, "") } else { (64, " nodad") };
                let (ours, theirs) = (host.node_side(fam), host.addr(fam));
                script += &format!("ip -n {node} addr add {ours}/{len} dev {link}{nodad}\n");
                script += &format!("ip -n {peer} addr add {theirs}/{len} dev eth0{nodad}\n");
                script += &format!("ip -n {peer} route add default via {ours}\n");
            }
        }
        // The node's default route, towards the outside client, is the one a real host has:
        // locally generated traffic to a VIP needs a route before nat OUTPUT can rewrite it.
        // FORWARD drops by default, as on a host running Docker: service traffic must pass
        // because iptproxy accepts it.
        for fam in FAMILIES {
            script += &format!("ip -n {node} route add default via {}\n", outside_client.addr(fam));
        }
        for tool in ["iptables", "ip6tables"] {
            script += &format!("ip netns exec {node} {tool}-{backend} -w -P FORWARD DROP\n");
        }
        run_script(&script);
        sysctl(&bench.ns, "net.ipv4.ip_forward", "1");
        sysctl(&bench.ns, "net.ipv6.conf.all.forwarding", "1");

        let servers = backends
            .iter()
            .map(|b| Server::start(&b.ns, b.name, &[b.addr(Fam::V4), b.addr(Fam::V6)], BACKEND_PORT))
            .collect();
        Topology { bench, outside_client, cluster_client, backends, servers }
    }

    /// The backend host called `name` (`b1`, `b2`, `b3`), as named in an [`Answer`].
    #[track_caller]
    pub fn backend(&self, name: &str) -> &Host {
        let Some(host) = self.backends.iter().find(|b| b.name == name) else { panic!("no backend {name}") };
        host
    }

    /// The names of all its namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        let hosts = [&self.outside_client, &self.cluster_client].into_iter().chain(&self.backends);
        hosts.map(|h| h.ns.name.clone()).chain([self.bench.ns.name.clone()]).collect()
    }

    /// The namespace of the node itself, as a client of its own services.
    pub fn node(&self) -> &Netns {
        &self.bench.ns
    }

    /// Writes `config` as the whole configuration, with its `$placeholders` replaced by
    /// `fam`'s addresses (see [`placeholder`]), and runs `iptproxy apply` in the node.
    #[track_caller]
    pub fn apply(&self, fam: Fam, config: &str) {
        self.bench.file("services.toml", &expand(fam, config));
        self.bench.iptproxy(&["apply"]).ok();
    }

    /// TCP connections plus UDP datagrams that reached any backend so far.
    pub fn seen(&self) -> usize {
        self.servers.iter().map(Server::seen).sum()
    }

    /// Packets dropped so far by iptproxy's DROP rule for denied traffic (filter
    /// `IPTPROXY-FIREWALL`), read from its counter.
    pub fn dropped(&self, fam: Fam) -> u64 {
        let tool = if fam == Fam::V4 { "iptables" } else { "ip6tables" };
        let out =
            self.node().command(format!("{tool}-{}-save", self.bench.backend)).args(["-c", "-t", "filter"]).output();
        let out = out.expect("run iptables-save");
        let save = String::from_utf8_lossy(&out.stdout);
        let rule = save.lines().find(|l| l.contains("-A IPTPROXY-FIREWALL ") && l.ends_with("-j DROP"));
        let rule = rule.unwrap_or_else(|| panic!("no DROP rule in IPTPROXY-FIREWALL:\n{save}"));
        let packets = rule.strip_prefix('[').and_then(|r| r.split_once(':')).map(|(p, _)| p.parse());
        packets.and_then(Result::ok).unwrap_or_else(|| panic!("no packet counter on {rule}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Servers first: their sockets would keep the namespaces alive after `ip netns del`.
        self.servers.clear();
    }
}

/// Sets a network sysctl of one namespace: `/proc/sys/net` shows the namespace of the thread
/// that opens it.
fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    client::in_netns(ns, || std::fs::write(&path, value)).unwrap_or_else(|e| panic!("in {}: {path}: {e}", ns.name));
}

fn run_script(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().expect("run sh");
    assert!(out.status.success(), "building the topology failed:\n{script}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// `config` with each `$name` replaced by [`placeholder`]`(fam, name)`.
pub fn expand(fam: Fam, config: &str) -> String {
    let mut out = String::new();
    let mut rest = config;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let name = &rest[i + 1..];
        let len = name.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(name.len());
        out.push_str(&placeholder(fam, &name[..len]));
        rest = &name[len..];
    }
    out + rest
}

/// The placeholders a config can use:
///
/// | placeholder | IPv4 | IPv6 |
/// | --- | --- | --- |
/// | `$vipN` | `198.18.0.N` | `2001:db8::N` |
/// | `$extN` | `198.18.1.N` | `2001:db8:0:1::N` |
/// | `$bN` (backend N's address) | `198.19.N.2` | `2001:db8:1:N::2` |
/// | `$epN` (backend N as an endpoint) | `198.19.N.2:8080` | `[2001:db8:1:N::2]:8080` |
/// | `$outside_net` (the outside client's link) | `198.18.100.0/24` | `2001:db8:0:100::/64` |
#[track_caller]
pub fn placeholder(fam: Fam, name: &str) -> String {
    let (kind, n) = name.split_at(name.find(|c: char| c.is_ascii_digit()).unwrap_or(name.len()));
    match (kind, n.parse::<u8>()) {
        ("vip", Ok(n)) => vip(fam, n).to_string(),
        ("ext", Ok(n)) => external_ip(fam, n).to_string(),
        ("b", Ok(n)) => address(fam, CLUSTER, n, 2).to_string(),
        ("ep", Ok(n)) => at(address(fam, CLUSTER, n, 2), BACKEND_PORT).to_string(),
        ("outside_net", _) if fam == Fam::V4 => "198.18.100.0/24".into(),
        ("outside_net", _) => "2001:db8:0:100::/64".into(),
        _ => panic!("unknown placeholder ${name}"),
    }
}
