//! What the packages ship, checked where `cargo test` can: the examples against the real
//! iptables, the unit against systemd-analyze. The installed package on a real systemd is
//! `cargo xtask e2e`'s job.

use crate::harness::{BACKENDS, Bench};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/iptproxyd.service");

#[test]
fn every_example_applies_on_both_backends_and_then_plans_no_change() {
    for backend in BACKENDS {
        let bench = Bench::new(backend);
        for entry in std::fs::read_dir(EXAMPLES).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            bench.file(&name, &std::fs::read_to_string(&path).unwrap());
        }
        bench.iptproxy(&["apply"]).ok();
        bench.iptproxy(&["plan", "--detailed-exitcode"]).ok();
        let v4 = bench.save(false);
        let v6 = bench.save(true);
        // One rule from each example file, so that none was left out.
        for (rules, comment) in [
            (&v4, "shop/web:80/tcp cluster IP"),
            (&v4, "dns-udp:53/udp cluster IP"),
            (&v4, "grafana:3000/tcp node port"),
            (&v4, "checkout:80/tcp -> 198.19.0.51:8080"),
            (&v6, "api-v6:443/tcp cluster IP"),
        ] {
            assert!(rules.contains(comment), "{backend}: no rule commented {comment:?}:\n{rules}");
        }
    }
}

#[test]
fn systemd_analyze_rates_the_unit_at_most_2_0() {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager", UNIT])
        .output()
        .expect("this test needs systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{}", text.lines().last().unwrap_or_default());
    assert!(out.status.success(), "exposure above 2.0:\n{text}{}", String::from_utf8_lossy(&out.stderr));
}
