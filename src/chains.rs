//! Chain names: which chains are iptproxy's, and the stable names of per-service chains.

use data_encoding::BASE32_NOPAD;
use sha2::{Digest, Sha256};

use crate::config::addr::host_port;
use crate::config::{Endpoint, Service};

/// Every chain whose name starts with this is iptproxy's; no other chain ever is.
pub const PREFIX: &str = "IPTPROXY-";

pub const SERVICES: &str = "IPTPROXY-SERVICES";
pub const NODEPORTS: &str = "IPTPROXY-NODEPORTS";
pub const POSTROUTING: &str = "IPTPROXY-POSTROUTING";
pub const MARK_MASQ: &str = "IPTPROXY-MARK-MASQ";
pub const MARK_DROP: &str = "IPTPROXY-MARK-DROP";
pub const MARK_OUTSIDE: &str = "IPTPROXY-MARK-OUTSIDE";
pub const FIREWALL: &str = "IPTPROXY-FIREWALL";
pub const FORWARD: &str = "IPTPROXY-FORWARD";
pub const CANARY: &str = "IPTPROXY-CANARY";
/// The one rule of a canary chain. Nothing jumps to the chain, so the rule never sees a
/// packet; it is there so that a flush of the table (which empties the chain but leaves
/// it standing) is told apart from an intact table. Canonical form, as `iptables -S` prints it.
pub const CANARY_RULE: &str = "-m comment --comment \"iptproxy canary\" -j RETURN";

/// The kernel refuses longer chain names.
pub const MAX_NAME: usize = 28;

pub const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

pub fn is_ours(chain: &str) -> bool {
    chain.starts_with(PREFIX)
}

/// A per-service chain: `kind` is `SVC` (load balancing), `EXT` (traffic from outside) or
/// `FW` (source ranges). The hash covers name, port and protocol, so neither a restart nor
/// a reordering of the files renames it.
pub fn service_chain(kind: &str, service: &Service) -> String {
    named(kind, &service.id())
}

/// The chain of one endpoint of a service.
pub fn endpoint_chain(service: &Service, endpoint: &Endpoint) -> String {
    named("SEP", &format!("{}/{}", service.id(), host_port(endpoint.addr, endpoint.port)))
}

fn named(kind: &str, key: &str) -> String {
    let head = format!("{PREFIX}{kind}-");
    let digest = Sha256::digest(key.as_bytes());
    let hash = BASE32_NOPAD.encode(&digest);
    let room = MAX_NAME - head.len();
    format!("{head}{}", &hash[..room])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_sources;

    fn service() -> Service {
        let toml = "[[service]]\nname='shop/web'\nvip='198.18.0.10'\nport=80\nendpoints=['198.19.0.2:8080']\n";
        let c = from_sources(vec![("a.toml".into(), toml.into())]).unwrap();
        c.services[0].clone()
    }

    #[test]
    fn names_are_stable_and_fit() {
        let s = service();
        // Pinned: a change here renames every chain on every host at upgrade.
        assert_eq!(service_chain("SVC", &s), "IPTPROXY-SVC-R6PTLJMTZGJY3EG");
        assert_eq!(endpoint_chain(&s, &s.endpoints[0]), "IPTPROXY-SEP-SPSD4PH7EUZAV4C");
        for name in [service_chain("FW", &s), service_chain("EXT", &s), endpoint_chain(&s, &s.endpoints[0])] {
            assert_eq!(name.len(), MAX_NAME, "{name}");
            assert!(is_ours(&name));
        }
    }

    #[test]
    fn names_depend_on_port_protocol_and_endpoint() {
        let s = service();
        let mut other = s.clone();
        other.port = 81;
        assert_ne!(service_chain("SVC", &s), service_chain("SVC", &other));
        let mut ep = s.endpoints[0].clone();
        ep.port = 8081;
        assert_ne!(endpoint_chain(&s, &s.endpoints[0]), endpoint_chain(&s, &ep));
        ep.port = 8080;
        ep.weight = 7;
        assert_eq!(endpoint_chain(&s, &s.endpoints[0]), endpoint_chain(&s, &ep));
    }
}
