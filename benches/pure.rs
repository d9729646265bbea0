//! Criterion benchmarks of the pure core at kube-proxy scale (10,000 services x 10
//! endpoints, ~420,000 rules; `IPTPROXY_BENCH_SERVICES` sets another size): loading the
//! config, rendering it whole, parsing that much `iptables-save` output, comparing it with
//! the config as it streams (nothing to change), the edits of a first sync rendered group
//! by group, and the incremental plan of a one-endpoint edit.
//!
//! `cargo bench --bench pure`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use iptproxy::compare::Comparer;
use iptproxy::config::{self, Config};
use iptproxy::ruleset::{Family, Ruleset};
use iptproxy::{edits, incremental, render, restore, save};

#[path = "../src/bin/iptproxy-bench/generate.rs"]
mod generate;

const ENDPOINTS: usize = 10;
const PER_FILE: usize = 100;

fn services() -> usize {
    std::env::var("IPTPROXY_BENCH_SERVICES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000)
}

fn sources(files: Vec<(String, String)>) -> Vec<(PathBuf, Vec<u8>)> {
    files.into_iter().map(|(name, text)| (PathBuf::from(name), text.into_bytes())).collect()
}

fn load(files: Vec<(String, String)>) -> Config {
    match config::from_sources(sources(files)) {
        Ok(c) => c,
        Err(e) => panic!("generated config is invalid: {e}"),
    }
}

/// What `iptables-save` prints once the config is applied (same lines, same order per chain).
fn save_text(desired: &Ruleset) -> String {
    desired.tables.iter().map(restore::full).collect()
}

fn pure(c: &mut Criterion) {
    let n = services();
    let files = generate::services(n, ENDPOINTS, PER_FILE);
    let config = load(files.clone());
    let desired = render::render(&config);
    let text = save_text(&desired);
    let mut edited_files = files.clone();
    let s = n / 2;
    let f = s / PER_FILE;
    let extra = [(s, "198.19.255.254:9999".to_string())];
    edited_files[f].1 = generate::services_file(f * PER_FILE, PER_FILE.min(n - f * PER_FILE), ENDPOINTS, &extra);
    let edited = load(edited_files);

    let mut g = c.benchmark_group(format!("{n} services x {ENDPOINTS} endpoints"));
    g.sample_size(10);
    g.bench_function("load config", |b| b.iter(|| config::from_sources(sources(black_box(files.clone())))));
    g.bench_function("render (whole)", |b| b.iter(|| render::render(black_box(&config))));
    g.bench_function(format!("parse save ({} lines)", text.lines().count()), |b| {
        b.iter(|| save::parse(Family::Ipv4, black_box(&text)))
    });
    g.bench_function("compare a save stream, no change", |b| {
        b.iter(|| {
            let mut c = Comparer::new(black_box(&config), Family::Ipv4);
            text.lines().for_each(|l| c.line(l).expect("well-formed"));
            c.finish().expect("well-formed")
        })
    });
    g.bench_function("first sync: every group rendered", |b| {
        b.iter(|| {
            let edits = Comparer::new(black_box(&config), Family::Ipv4).finish().expect("nothing read");
            edits.iter().flat_map(|t| t.groups()).map(|g| g.len()).sum::<usize>()
        })
    });
    g.bench_function("incremental plan, one endpoint added", |b| {
        b.iter(|| incremental::between(black_box(&config), black_box(&edited)).map(|e| edits::to_plan(&e)))
    });
    g.finish();
}

criterion_group!(benches, pure);
criterion_main!(benches);
