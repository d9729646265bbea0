//! The config loader on arbitrary bytes, split into up to four files at `\0\0` so that
//! checks across files run too. It must never panic; a config it accepts must render, and
//! the script writer must accept every line of it.
#![no_main]

use iptproxy::config;
use iptproxy::plan;
use iptproxy::render;
use iptproxy::restore;
use iptproxy::ruleset::Ruleset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut files = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(2).position(|w| w == b"\0\0").filter(|_| files.len() < 3) {
        files.push(&rest[..at]);
        rest = &rest[at + 2..];
    }
    files.push(rest);
    let sources = files.iter().enumerate().map(|(i, f)| (format!("/etc/iptproxy/{i}.toml").into(), f.to_vec())).collect();
    if let Ok(config) = config::from_sources(sources) {
        let desired = render::render(&config);
        let plan = plan::plan(&desired, &Ruleset::default());
        if let Err(e) = restore::scripts(&plan, restore::DEFAULT_MAX_LINES) {
            panic!("a valid config was refused by the writer: {e}");
        }
    }
});
