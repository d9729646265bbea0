//! The iptables-save readers on arbitrary bytes: neither may panic. What the parser accepts
//! must plan and write (or be refused by the writer) without panicking; the streaming
//! comparison that `plan`, `apply` and the daemon use must compare it with a config that
//! has every kind of service, and write the result, without panicking either.
#![no_main]

use std::sync::OnceLock;

use iptproxy::apply;
use iptproxy::compare::Comparer;
use iptproxy::config::{self, Config};
use iptproxy::plan;
use iptproxy::restore;
use iptproxy::ruleset::{Family, Ruleset};
use iptproxy::save;
use libfuzzer_sys::fuzz_target;

/// The examples: node ports, external IPs, source ranges, affinity, weights, UDP, IPv6.
fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let file = |name: &str, text: &str| (name.into(), text.as_bytes().to_vec());
        let sources = vec![
            file("dns.toml", include_str!("../../examples/dns.toml")),
            file("dual-stack.toml", include_str!("../../examples/dual-stack.toml")),
            file("node-port.toml", include_str!("../../examples/node-port.toml")),
            file("web.toml", include_str!("../../examples/web.toml")),
            file("weights-affinity.toml", include_str!("../../examples/weights-affinity.toml")),
        ];
        config::from_sources(sources).unwrap_or_else(|e| panic!("the examples are valid: {e:?}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for family in Family::ALL {
        if let Ok(tables) = save::parse(family, &text) {
            // What `iptproxy cleanup` would do to this live ruleset.
            let live = Ruleset { tables };
            let plan = plan::plan(&Ruleset::default(), &live);
            let _ = restore::scripts(&plan, 7);
        }
        let mut comparer = Comparer::new(config(), family);
        if text.lines().all(|line| comparer.line(line).is_ok()) {
            if let Ok(edits) = comparer.finish() {
                let _ = apply::scripts(&edits, 7);
            }
        }
    }
});
