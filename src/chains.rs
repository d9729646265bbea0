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

/// The kinds of per-service chain, in the order [`key`] numbers them.
const KINDS: [&str; 4] = ["SVC", "EXT", "FW", "SEP"];

/// A per-service chain's name packed into a number, exactly: kind and hash, 5 bits a
/// character. Two names have the same key only if they are the same name; a name that is
/// not a per-service chain's has none. For finding chains by name without holding names.
pub fn key(name: &str) -> Option<u128> {
    let rest = name.strip_prefix(PREFIX)?;
    let (kind, hash) = rest.split_once('-')?;
    let code = KINDS.iter().position(|k| *k == kind)?;
    if name.len() != MAX_NAME {
        return None;
    }
    let mut key = code as u128;
    for b in hash.bytes() {
        let digit = match b {
            b'A'..=b'Z' => b - b'A',
            b'2'..=b'7' => b - b'2' + 26,
            _ => return None,
        };
        key = (key << 5) | u128::from(digit);
    }
    Some(key)
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
    fn keys_tell_per_service_chains_apart_exactly() {
        let s = service();
        let names = [
            service_chain("SVC", &s),
            service_chain("EXT", &s),
            service_chain("FW", &s),
            endpoint_chain(&s, &s.endpoints[0]),
        ];
        let keys: Vec<u128> = names.iter().map(|n| key(n).unwrap()).collect();
        for (i, a) in keys.iter().enumerate() {
            assert_eq!(keys.iter().filter(|b| *b == a).count(), 1, "{}", names[i]);
        }
        // SVC and EXT share the hash, not the key.
        assert_eq!(names[0][13..], names[1][13..]);
        for other in ["IPTPROXY-SERVICES", "IPTPROXY-SVC-R6PTLJMTZGJY3E", "IPTPROXY-SVC-R6PTLJMTZGJY3E1", "DOCKER"] {
            assert_eq!(key(other), None, "{other}");
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
