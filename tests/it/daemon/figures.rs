//! Figures, not assertions: what the daemon's work costs at a realistic size, on each
//! backend. Ignored by default (it takes a while); run it with
//! `cargo test --release --test it daemon::figures -- --ignored --nocapture --test-threads 1`.

use std::time::Instant;

use super::running::{Running, has_line};
use super::settings;
use crate::fixtures::many_services;
use crate::harness::{BACKENDS, Bench};

/// The `(N ms)` the daemon logged on the line holding `needle`.
fn logged_ms(d: &Running, needle: &str) -> String {
    let log = d.log();
    let line = log.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in\n{log}"));
    let at = line.rfind('(').map_or(0, |i| i + 1);
    line[at..].trim_end_matches(')').to_string()
}

#[test]
#[ignore = "benchmark: prints figures; run it explicitly"]
fn daemon_figures() {
    println!(
        "backend services endpoints | start to READY | one-endpoint change | full resync (SIGHUP) | canary check vs save"
    );
    for backend in BACKENDS {
        for n in [1000, 5000] {
            let b = Bench::new(backend);
            b.file("settings.toml", &settings("1h", "1h"));
            let files = many_services(n, 2, 500);
            for (name, text) in &files {
                b.file(name, text);
            }
            let started = Instant::now();
            let mut d = Running::start(&b, &[("RUST_LOG", "info,iptproxy::daemon=debug")]);
            d.wait_note("READY=1", |n| has_line(n, "READY=1"));
            let ready = started.elapsed();

            let (name, text) = &files[0];
            b.file(name, &text.replacen("\"]\n", "\", \"198.19.250.1:8080\"]\n", 1));
            d.wait_log("files changed: Applied", 1);
            let change = logged_ms(&d, "files changed: Applied");

            d.signal(nix::sys::signal::Signal::SIGHUP);
            d.wait_note("READY=1 after SIGHUP", |n| has_line(n, "READY=1"));
            let resync = logged_ms(&d, "SIGHUP: the live rules match the config");

            let tables =
                ["nat", "filter"].map(|t| format!("iptables-{backend} -w -t {t} -S IPTPROXY-CANARY >/dev/null"));
            let t = Instant::now();
            b.ns.sh(&tables.join(" && "));
            let canary = t.elapsed();
            let t = Instant::now();
            b.ns.sh(&format!("iptables-{backend}-save >/dev/null"));
            let save = t.elapsed();
            println!(
                "{backend:>7} {n:>8} {:>9} | {:>14.2?} | {change:>19} | {resync:>20} | {canary:.2?} vs {save:.2?}",
                n * 2,
                ready
            );
        }
    }
}
