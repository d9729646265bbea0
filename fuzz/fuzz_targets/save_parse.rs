//! The iptables-save parser on arbitrary bytes: it must never panic, and whatever it
//! accepts must plan and write (or be refused by the writer) without panicking either.
#![no_main]

use iptproxy::plan;
use iptproxy::restore;
use iptproxy::ruleset::{Family, Ruleset};
use iptproxy::save;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for family in Family::ALL {
        if let Ok(tables) = save::parse(family, &text) {
            // What `iptproxy cleanup` would do to this live ruleset.
            let live = Ruleset { tables };
            let plan = plan::plan(&Ruleset::default(), &live);
            let _ = restore::scripts(&plan, 7);
        }
    }
});
