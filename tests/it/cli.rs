//! The command line without the kernel: `check`, `render`, errors, exit codes.

use crate::fixtures::EVERY_FEATURE;
use crate::harness::run_plain;

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn check_needs_neither_root_nor_iptables() {
    let dir = dir_with(&[("services.toml", EVERY_FEATURE)]);
    let d = dir.path().to_str().unwrap();
    // No PATH: any attempt to run iptables would fail.
    let run = run_plain("iptproxy", &["-c", d, "check"], &[("PATH", "/nonexistent")]).ok();
    assert_eq!(
        run.stdout,
        format!("Configuration OK: 7 services (4 IPv4, 3 IPv6), 10 endpoints, in 1 file under {d}.\n")
    );
}

#[test]
fn check_reads_the_config_dir_from_the_environment() {
    let dir = dir_with(&[("a.toml", "[[service]]\nname='a'\nvip='198.18.0.1'\nport=1\n")]);
    let run = run_plain("iptproxy", &["check"], &[("IPTPROXY_CONFIG_DIR", dir.path().to_str().unwrap())]).ok();
    assert!(run.stdout.starts_with("Configuration OK: 1 service ("), "{}", run.stdout);
}

#[test]
fn check_reports_every_error_with_file_and_line() {
    let dir = dir_with(&[
        ("a.toml", "[[service]]\nname = \"web\"\nvip = \"198.18.0.1\"\nport = 80\nendpoints = [\"198.19.0.300:80\"]\n"),
        ("b.toml", "[settings]\nmasquerade_bit = 40\n"),
        ("c.toml", "[[service\n"),
    ]);
    let d = dir.path();
    let run = run_plain("iptproxy", &["-c", d.to_str().unwrap(), "check"], &[]).code(1);
    let a = d.join("a.toml");
    assert!(
        run.stderr.contains(&format!(
            "error: {}:5: service \"web\": endpoint: \"198.19.0.300:80\": invalid IPv4 address",
            a.display()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "error: {}:2: settings: masquerade_bit: 40 is out of range (0 to 31)",
            d.join("b.toml").display()
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("error: {}:1: ", d.join("c.toml").display())), "{}", run.stderr);
    assert!(run.stderr.ends_with("3 errors in the configuration; nothing was changed\n"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn a_missing_config_dir_is_an_error() {
    let run = run_plain("iptproxy", &["-c", "/nonexistent/iptproxy", "check"], &[]).code(1);
    assert!(run.stderr.contains("/nonexistent/iptproxy: cannot read the config directory"), "{}", run.stderr);
}

#[test]
fn render_prints_restore_input_per_family() {
    let dir = dir_with(&[("services.toml", EVERY_FEATURE)]);
    let d = dir.path().to_str().unwrap();
    let all = run_plain("iptproxy", &["-c", d, "render"], &[]).ok().stdout;
    assert!(all.starts_with("# IPv4: iptables-restore input\n*nat\n"), "{all}");
    assert!(all.contains("# IPv6: ip6tables-restore input\n*nat\n"), "{all}");
    let v6 = run_plain("iptproxy", &["-c", d, "render", "--family", "ipv6"], &[]).ok().stdout;
    assert!(v6.starts_with("# IPv6: ip6tables-restore input\n") && !v6.contains("IPv4"), "{v6}");
}

#[test]
fn usage_errors_exit_nonzero() {
    let run = run_plain("iptproxy", &["plan", "--json", "--script"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = run_plain("iptproxy", &["--backend", "iptables-ng", "check"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn the_examples_are_valid() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let run = run_plain("iptproxy", &["-c", examples, "check"], &[]).ok();
    assert!(run.stdout.starts_with("Configuration OK"), "{}", run.stdout);
}
