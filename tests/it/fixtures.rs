//! Configs and foreign rulesets shared by the tests.

/// Every feature of the config at once, IPv4 and IPv6.
pub const EVERY_FEATURE: &str = r#"
[settings]
cluster_cidrs = ["198.19.0.0/16", "198.20.0.0/16", "2001:db8:1::/64"]

[[service]]
name = "shop/web"
vip = "198.18.0.10"
port = 80
endpoints = ["198.19.0.2:8080", { address = "198.19.0.4", port = 8080, weight = 3 }, { address = "198.19.0.9", weight = 0 }]
node_port = 30080
external_ips = ["198.18.1.1", "198.18.1.2"]
source_ranges = ["198.18.2.0/24", "198.18.3.3"]
session_affinity = "client-ip"
affinity_timeout = "1h"

[[service]]
name = "dns"
protocol = "udp"
vip = "198.18.0.53"
port = 53
endpoints = ["198.19.0.5:53", "198.19.0.6:53", "198.19.0.7"]
node_port = 30053

[[service]]
name = "sctp-signal"
protocol = "sctp"
vip = "198.18.0.36"
port = 3868
endpoints = ["198.19.0.8:3868"]
masquerade = "always"

[[service]]
name = "empty"
vip = "198.18.0.99"
port = 443
node_port = 30443
external_ips = ["198.18.1.3"]

[[service]]
name = "web6"
vip = "2001:db8::10"
port = 80
endpoints = ["[2001:db8:1::2]:8080", { address = "2001:db8:1::3", port = 8080, weight = 2 }]
session_affinity = "client-ip"
node_port = 30081
external_ips = ["2001:db8:2::1"]
source_ranges = ["2001:db8:3::/48"]

[[service]]
name = "dns6"
protocol = "udp"
vip = "2001:db8::53"
port = 53
endpoints = ["[2001:db8:1::5]:53"]
masquerade = "never"

[[service]]
name = "empty6"
vip = "2001:db8::99"
port = 443
"#;

/// Every setting away from its default.
pub const OTHER_SETTINGS: &str = "[settings]\nrandom_fully = false\nforward_accept = false\nmasquerade_all = true\n\
     masquerade_bit = 0\ndrop_bit = 31\n\n[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\n\
     endpoints = [\"198.19.0.2:8080\", \"198.19.0.3:8080\"]\n";

/// Rules other tools keep on a real host (Docker, kube-proxy, kubelet, an ipset match,
/// counters, a quoted comment with escapes, an empty rule), to load before iptproxy runs.
/// Needs the ipset `blocklist` (see [`FOREIGN_SETUP`]).
pub const FOREIGN_V4: &str = r#"*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[4:240] -A PREROUTING -p udp -m udp --dport 4789 -j NOTRACK
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-IPTABLES-HINT - [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
:KUBE-SEP-MK55K7XS7VKFSUGB - [0:0]
:KUBE-SEP-YEXLSZTEUWXX6KZK - [0:0]
[11:660] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[3:180] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
[2:120] -A POSTROUTING -s 198.18.200.0/24 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 198.18.200.2:80
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 198.18.100.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-MK55K7XS7VKFSUGB
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns" -j KUBE-SEP-YEXLSZTEUWXX6KZK
-A KUBE-SEP-MK55K7XS7VKFSUGB -s 198.18.244.48/32 -m comment --comment "kube-system/kube-dns:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-MK55K7XS7VKFSUGB -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination 198.18.244.48:53
-A KUBE-SEP-YEXLSZTEUWXX6KZK -s 198.18.244.49/32 -m comment --comment "kube-system/kube-dns:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-YEXLSZTEUWXX6KZK -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination 198.18.244.49:53
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-USER - [0:0]
:KUBE-FIREWALL - [0:0]
:ADMIN - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -i lo -j ACCEPT
[9:900] -A INPUT
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A OUTPUT -j KUBE-FIREWALL
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
[5:300] -A DOCKER-USER -m set --match-set blocklist src -j DROP
-A DOCKER-USER -j RETURN
-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP
-A ADMIN -s 198.18.250.0/24 -p tcp -m tcp --dport 22 -m comment --comment "it's the \"admin\" net" -j ACCEPT
-A ADMIN ! -s 198.18.251.0/24 -p tcp -m multiport --dports 80,443 -j REJECT --reject-with tcp-reset
COMMIT
"#;

pub const FOREIGN_V6: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 2001:db8:200::/64 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A INPUT -p ipv6-icmp -j ACCEPT
-A FORWARD -j DOCKER-USER
[1:80] -A DOCKER-USER -s 2001:db8:dead::/48 -j DROP
COMMIT
"#;

/// What the foreign rulesets need in the namespace first.
pub const FOREIGN_SETUP: &str = "ipset create blocklist hash:ip && ipset add blocklist 198.18.66.6";

/// `n` services with `eps` endpoints each, `per_file` services to a file: (file name, text).
pub fn many_services(n: usize, eps: usize, per_file: usize) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for chunk in 0..n.div_ceil(per_file) {
        let mut text = String::new();
        for i in chunk * per_file..((chunk + 1) * per_file).min(n) {
            // 64,000 addresses in 198.19.0.0/16 (256 x 250); past that, the same addresses on other ports.
            let endpoints: Vec<String> = (0..eps)
                .map(|e| i * eps + e)
                .map(|k| format!("\"198.19.{}.{}:{}\"", (k % 64_000) / 250, k % 250 + 1, 8080 + k / 64_000))
                .collect();
            text.push_str(&format!(
                "[[service]]\nname = \"svc-{i:05}\"\nvip = \"198.18.{}.{}\"\nport = 80\nendpoints = [{}]\n\n",
                i / 250,
                i % 250 + 1,
                endpoints.join(", ")
            ));
        }
        files.push((format!("{chunk:03}.toml"), text));
    }
    files
}
