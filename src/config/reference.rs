//! The configuration reference: every key the files accept, its type, default and meaning.
//!
//! This table is the one source the documentation is made from (`iptproxy.toml(5)` is
//! generated from it). Its tests hold it to the parser: the keys the parser accepts are
//! exactly the keys listed here, and every default listed is the value the parser uses
//! when the key is left out. So the documentation cannot drift from the code.

/// Where a key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `[settings]`: in at most one file, every key optional.
    Settings,
    /// `[[service]]`: one table per service.
    Service,
    /// An inline table in a service's `endpoints` array.
    Endpoint,
}

impl Section {
    pub const ALL: [Section; 3] = [Section::Settings, Section::Service, Section::Endpoint];

    /// How the section is written in a file.
    pub fn header(self) -> &'static str {
        match self {
            Section::Settings => "[settings]",
            Section::Service => "[[service]]",
            Section::Endpoint => "endpoints = [{ ... }]",
        }
    }

    pub fn keys(self) -> impl Iterator<Item = &'static Key> {
        KEYS.iter().filter(move |k| k.section == self)
    }
}

/// What happens when a key is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAbsent {
    /// The key must be given.
    Required,
    /// The key has no value and its feature is off.
    Unset,
    /// The value used, as TOML (`14`, `"10s"`, `[]`); the parser behaves as if it were written.
    Value(&'static str),
    /// A default that depends on other keys, described in words.
    Derived(&'static str),
}

impl std::fmt::Display for WhenAbsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WhenAbsent::Required => f.write_str("required"),
            WhenAbsent::Unset => f.write_str("none"),
            WhenAbsent::Value(v) | WhenAbsent::Derived(v) => f.write_str(v),
        }
    }
}

/// One key of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub section: Section,
    pub name: &'static str,
    /// The TOML type and its allowed values, in words.
    pub kind: &'static str,
    pub default: WhenAbsent,
    /// What the key does, in one or a few sentences.
    pub doc: &'static str,
}

const fn key(section: Section, name: &'static str, kind: &'static str, default: WhenAbsent, doc: &'static str) -> Key {
    Key { section, name, kind, default, doc }
}

use Section::{Endpoint, Service, Settings};
use WhenAbsent::{Derived, Required, Unset, Value};

/// Every key, in the order the documentation lists them.
pub const KEYS: &[Key] = &[
    key(
        Settings,
        "cluster_cidrs",
        "array of CIDRs (IPv4 and IPv6 may be mixed)",
        Value("[]"),
        "Networks where endpoints live. Clients outside them are masqueraded (their source address becomes this \
         host's) so that replies come back through this host.",
    ),
    key(
        Settings,
        "masquerade_all",
        "boolean",
        Value("false"),
        "Masquerade every client, not only those outside cluster_cidrs.",
    ),
    key(
        Settings,
        "masquerade_bit",
        "integer, 0 to 31",
        Value("14"),
        "The packet mark bit that flags a packet for masquerading (bit 14 is 0x4000). Pick a bit no other tool on \
         the host uses.",
    ),
    key(
        Settings,
        "drop_bit",
        "integer, 0 to 31, not masquerade_bit",
        Value("15"),
        "The packet mark bit that flags a packet denied by policy; such packets are dropped in the filter table \
         (bit 15 is 0x8000).",
    ),
    key(
        Settings,
        "random_fully",
        "boolean",
        Value("true"),
        "Masquerade with --random-fully: fully random source ports, which avoids races between connections \
         masqueraded at the same time.",
    ),
    key(
        Settings,
        "forward_accept",
        "boolean",
        Value("true"),
        "Accept forwarded service traffic that no other rule decided on, so that services work on a host whose \
         FORWARD policy is DROP.",
    ),
    key(
        Settings,
        "canary_interval",
        "duration, 1s to 1h",
        Value("\"10s\""),
        "How often iptproxyd checks its canary chains, to notice at once when another program flushed a table.",
    ),
    key(
        Settings,
        "resync_interval",
        "duration, 1s to 1 day",
        Value("\"5m\""),
        "How often iptproxyd reads all live rules back and repairs any drift, canary or not.",
    ),
    key(
        Settings,
        "lock_wait",
        "duration, 1s to 10m",
        Value("\"5s\""),
        "How long iptables waits for the xtables lock that other firewall tools hold while they write.",
    ),
    key(
        Service,
        "name",
        "string: [a-z0-9][a-z0-9._/-]*, at most 63 characters",
        Required,
        "The service's name, unique across all files. Rule comments, plans and logs use it.",
    ),
    key(Service, "protocol", "string: \"tcp\", \"udp\" or \"sctp\"", Value("\"tcp\""), "The transport protocol."),
    key(
        Service,
        "vip",
        "string: an IPv4 or IPv6 address",
        Required,
        "The virtual IP clients connect to. Its family decides the service's: endpoints, external IPs and source \
         ranges must be of the same family.",
    ),
    key(Service, "port", "integer, 1 to 65535", Required, "The port clients connect to."),
    key(
        Service,
        "endpoints",
        "array of \"address:port\", \"[ipv6]:port\", \"address\" or inline tables (see ENDPOINTS)",
        Value("[]"),
        "The backends. An endpoint without a port uses the service's port. A service with no endpoints, or only \
         drained ones, refuses connections at once (ICMP port unreachable) instead of letting them time out.",
    ),
    key(
        Service,
        "node_port",
        "integer, 1 to 65535",
        Unset,
        "Also serve the service on this port of every local address of the host. Unique per protocol and family.",
    ),
    key(
        Service,
        "external_ips",
        "array of addresses",
        Value("[]"),
        "More addresses the service answers on, besides the VIP.",
    ),
    key(
        Service,
        "source_ranges",
        "array of CIDRs or addresses",
        Value("[]"),
        "Who may use the external IPs; packets from elsewhere are dropped. Empty means everyone. Needs \
         external_ips.",
    ),
    key(
        Service,
        "session_affinity",
        "string: \"none\" or \"client-ip\"",
        Value("\"none\""),
        "With \"client-ip\", each client sticks to the endpoint it first reached, until affinity_timeout passes \
         without traffic.",
    ),
    key(
        Service,
        "affinity_timeout",
        "duration, 1s to 1 day",
        Value("\"3h\""),
        "How long a client sticks to its endpoint. Only with session_affinity = \"client-ip\".",
    ),
    key(
        Service,
        "masquerade",
        "string: \"auto\", \"always\" or \"never\"",
        Value("\"auto\""),
        "Whose source address is rewritten. \"auto\": clients outside cluster_cidrs (everyone with \
         masquerade_all), and all traffic that arrives by node port or external IP. \"always\": everyone. \
         \"never\": nobody, except an endpoint calling its own service (hairpin), which cannot work otherwise.",
    ),
    key(Endpoint, "address", "string: an address of the VIP's family", Required, "The endpoint's address."),
    key(Endpoint, "port", "integer, 1 to 65535", Derived("the service's port"), "The endpoint's port."),
    key(
        Endpoint,
        "weight",
        "integer, 0 to 10000",
        Value("1"),
        "The endpoint's relative share of new connections. 0 drains it: existing connections go on, new ones go \
         elsewhere.",
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;
    use crate::config::{Config, ConfigErrors, from_sources};

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        from_sources(vec![(PathBuf::from("t.toml"), text.as_bytes().to_vec())])
    }

    fn errors(text: &str) -> String {
        match load(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"),
        }
    }

    /// The names between backticks after "expected" in serde's unknown-field message.
    fn expected_fields(message: &str) -> BTreeSet<String> {
        let (_, list) = message.split_once("expected").unwrap_or_else(|| panic!("no list in: {message}"));
        list.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    fn documented(section: Section) -> BTreeSet<String> {
        section.keys().map(|k| k.name.to_string()).collect()
    }

    const SERVICE: &str = "[[service]]\nname = \"web\"\nvip = \"198.18.0.1\"\nport = 80\n";

    #[test]
    fn the_settings_keys_documented_are_exactly_those_the_parser_accepts() {
        let message = errors("[settings]\nno_such_key = 1\n");
        assert_eq!(expected_fields(&message), documented(Settings), "{message}");
    }

    #[test]
    fn the_service_keys_documented_are_exactly_those_the_parser_accepts() {
        let message = errors(&format!("{SERVICE}no_such_key = 1\n"));
        assert_eq!(expected_fields(&message), documented(Service), "{message}");
    }

    #[test]
    fn the_endpoint_keys_documented_are_exactly_those_the_parser_accepts() {
        let message = errors(&format!("{SERVICE}endpoints = [{{ address = \"198.19.0.1\", no_such_key = 1 }}]\n"));
        let (_, list) = message.split_once("(expected ").expect("the message lists the keys");
        let accepted: BTreeSet<String> = list.trim_end_matches(')').split(", ").map(str::to_string).collect();
        assert_eq!(accepted, documented(Endpoint), "{message}");
    }

    #[test]
    fn every_settings_default_is_what_the_parser_uses_when_the_key_is_left_out() {
        let without = load("[settings]\n").expect("empty settings are valid");
        for k in Settings.keys() {
            let Value(v) = k.default else { panic!("settings key {} must have a literal default", k.name) };
            let with = load(&format!("[settings]\n{} = {v}\n", k.name)).expect("the default is valid");
            assert_eq!(with.settings, without.settings, "settings.{} = {v}", k.name);
        }
    }

    #[test]
    fn every_service_default_is_what_the_parser_uses_when_the_key_is_left_out() {
        for k in Service.keys() {
            // affinity_timeout is only accepted with affinity on; compare under the same condition.
            let base = match k.name {
                "affinity_timeout" => format!("{SERVICE}session_affinity = \"client-ip\"\n"),
                _ => SERVICE.to_string(),
            };
            match k.default {
                Value(v) => {
                    let without = load(&base).expect("the base service is valid");
                    let with = load(&format!("{base}{} = {v}\n", k.name)).expect("the default is valid");
                    assert_eq!(with.services, without.services, "{} = {v}", k.name);
                }
                Required => {
                    let text: String =
                        base.lines().filter(|l| !l.starts_with(k.name)).map(|l| format!("{l}\n")).collect();
                    assert!(errors(&text).contains(&format!("missing field \"{}\"", k.name)), "{}", k.name);
                }
                Unset => {
                    let service = &load(&base).expect("the base service is valid").services[0];
                    assert_eq!(k.name, "node_port", "a new key without a default: add its check here");
                    assert_eq!(service.node_port, None);
                }
                Derived(_) => panic!("{}: a service key's default must be checkable", k.name),
            }
        }
    }

    #[test]
    fn every_endpoint_default_is_what_the_parser_uses_when_the_key_is_left_out() {
        let endpoints = |list: &str| load(&format!("{SERVICE}endpoints = [{list}]\n")).expect("valid").services;
        let short = endpoints("\"198.19.0.1\"");
        assert_eq!(endpoints("{ address = \"198.19.0.1\" }"), short);
        assert_eq!(endpoints("{ address = \"198.19.0.1\", port = 80, weight = 1 }"), short);
        assert_eq!(Endpoint.keys().find(|k| k.name == "weight").map(|k| k.default), Some(Value("1")));
        assert_eq!(Endpoint.keys().find(|k| k.name == "port").map(|k| k.default), Some(Derived("the service's port")));
        let message = errors(&format!("{SERVICE}endpoints = [{{ port = 80 }}]\n"));
        assert!(message.contains("missing key \"address\""), "{message}");
    }

    #[test]
    fn every_key_is_listed_once_and_documented() {
        let mut seen = BTreeSet::new();
        for k in KEYS {
            assert!(seen.insert((k.section.header(), k.name)), "{} is listed twice", k.name);
            assert!(!k.kind.is_empty() && k.doc.ends_with('.'), "{}: document its type and meaning", k.name);
        }
    }
}
