//! For the property tests: generated configs.

use std::path::PathBuf;

use proptest::prelude::*;

use crate::config::{Config, from_sources};

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
