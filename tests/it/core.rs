//! The core, against the real kernel: apply reaches a fixed point, edits are minimal,
//! nothing foreign changes, failures leave the rules as they were. Each test runs on both
//! the nf_tables and the legacy backend.

use crate::fixtures::{EVERY_FEATURE, FOREIGN_SETUP, FOREIGN_V4, FOREIGN_V6, OTHER_SETTINGS, many_services};
use crate::harness::{BACKENDS, Bench, foreign_lines};

#[test]
fn plan_after_apply_is_empty_for_every_feature() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", EVERY_FEATURE);
        let plan = b.iptproxy(&["plan", "--detailed-exitcode"]).code(2);
        assert!(plan.stdout.contains("chains to add"), "{}", plan.stdout);
        let applied = b.iptproxy(&["apply"]).ok();
        assert!(applied.stdout.starts_with("Applied: "), "{}", applied.stdout);

        let again = b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
        assert_eq!(again.stdout, "No changes. The live rules match the configuration.\n", "{backend}");
        let v4 = b.save(false);
        let v6 = b.save(true);
        for needle in [
            "-j DNAT --to-destination 198.19.0.4:8080",
            "-m sctp --dport 3868 -j IPTPROXY-SVC-",
            "--probability 0.75000000000",
        ] {
            assert!(v4.contains(needle), "{backend}: {needle} not in\n{v4}");
        }
        assert!(v6.contains("-j DNAT --to-destination [2001:db8:1::3]:8080"), "{v6}");
        assert!(v6.contains("--reject-with icmp6-port-unreachable"), "{v6}");
        assert!(!v4.contains("198.19.0.9"), "a drained endpoint has no rules");
        // A second apply changes nothing at all, counters included.
        let before = b.save_all();
        assert_eq!(b.iptproxy(&["apply"]).ok().stdout, "No changes. The live rules match the configuration.\n");
        assert_eq!(b.save_all(), before);
    }
}

#[test]
fn plan_after_apply_is_empty_for_other_settings() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", OTHER_SETTINGS);
        b.iptproxy(&["apply"]).ok();
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
        assert!(b.save(false).contains("-j MARK --set-xmark 0x80000000/0x80000000"));
    }
}

#[test]
fn foreign_rules_come_through_byte_for_byte() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.ns.sh(FOREIGN_SETUP);
        b.ns.restore(backend, false, FOREIGN_V4);
        b.ns.restore(backend, true, FOREIGN_V6);
        let pristine = b.save_all();
        assert!(pristine.contains("[5:300] -A DOCKER-USER -m set --match-set blocklist src -j DROP"), "{pristine}");

        b.file("services.toml", EVERY_FEATURE);
        b.iptproxy(&["apply"]).ok();
        let applied = b.save_all();
        assert_ne!(applied, pristine);
        assert_eq!(foreign_lines(&applied), foreign_lines(&pristine), "{backend}: apply changed a foreign line");

        // A change: one endpoint more, one service fewer.
        let changed = EVERY_FEATURE.replace("\"198.19.0.7\"]", "\"198.19.0.7\", \"198.19.0.17\"]").replace(
            "[[service]]\nname = \"empty\"\nvip = \"198.18.0.99\"\nport = 443\nnode_port = 30443\nexternal_ips = [\"198.18.1.3\"]\n",
            "",
        );
        assert!(changed.len() + 60 < EVERY_FEATURE.len(), "the edit applies");
        b.file("services.toml", &changed);
        b.iptproxy(&["apply"]).ok();
        assert_eq!(
            foreign_lines(&b.save_all()),
            foreign_lines(&pristine),
            "{backend}: a change touched a foreign line"
        );
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();

        let cleaned = b.iptproxy(&["cleanup"]).ok();
        assert!(cleaned.stdout.starts_with("Removed "), "{}", cleaned.stdout);
        assert_eq!(b.save_all(), pristine, "{backend}: cleanup must restore the ruleset exactly");
        assert_eq!(b.iptproxy(&["cleanup"]).ok().stdout, "Nothing to clean up: no iptproxy rules are present.\n");
    }
}

#[test]
fn one_new_endpoint_among_a_thousand_services_is_a_handful_of_lines() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        let files = many_services(1000, 2, 100);
        for (name, text) in &files {
            b.file(name, text);
        }
        b.iptproxy(&["apply"]).ok();
        // Counters that only an untouched rule can carry through the change.
        let saved = b.save(false);
        let untouched = rule_line(&saved, "svc-00499:80/tcp cluster IP");
        let spec = untouched.trim_start_matches("-A IPTPROXY-SERVICES ");
        let position = saved.lines().filter(|l| l.starts_with("-A IPTPROXY-SERVICES ")).position(|l| l == untouched);
        let position = (position.unwrap() + 1).to_string();
        b.ns.sh(&format!("iptables-{backend} -w -t nat -R IPTPROXY-SERVICES {position} -c 7 700 {spec}"));

        let (name, text) = &files[5];
        let edited = text.replace("\"198.19.4.2:8080\"]", "\"198.19.4.2:8080\", \"198.19.250.1:8080\"]");
        assert!(edited.len() > text.len(), "the edit applies");
        b.file(name, &edited);
        let script = b.iptproxy(&["plan", "--script"]).ok().stdout;
        let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(lines.len() <= 10, "{backend}: a one-endpoint change wrote {} lines:\n{script}", lines.len());
        assert!(!script.contains("IPTPROXY-SERVICES"), "the services chain is not rewritten:\n{script}");
        b.iptproxy(&["apply"]).ok();

        let after = b.ns.command(format!("iptables-{backend}-save")).args(["-c", "-t", "nat"]).output().unwrap();
        let after = String::from_utf8_lossy(&after.stdout);
        assert!(after.contains(&format!("[7:700] {untouched}")), "{backend}: counters of an untouched rule were lost");
        assert!(after.contains("--to-destination 198.19.250.1:8080"));
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
    }
}

fn rule_line<'a>(save: &'a str, comment: &str) -> &'a str {
    save.lines().find(|l| l.contains(comment)).unwrap_or_else(|| panic!("no rule with {comment}"))
}

#[test]
fn invalid_config_changes_nothing_and_names_file_line_and_field() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", EVERY_FEATURE);
        b.iptproxy(&["apply"]).ok();
        let before = b.save_all();

        b.file(
            "zz-bad.toml",
            "[[service]]\nname = \"web\"\nvip = \"198.18.0.20\"\nport = 80\nendpoints = [\"198.19.0.300:80\"]\n",
        );
        for command in ["apply", "plan", "check"] {
            let run = b.iptproxy(&[command]).code(1);
            let path = b.path("zz-bad.toml");
            let expected =
                format!("{}:5: service \"web\": endpoint: \"198.19.0.300:80\": invalid IPv4 address", path.display());
            assert!(run.stderr.contains(&expected), "{command}: {}", run.stderr);
            assert!(run.stdout.is_empty(), "{command} printed {}", run.stdout);
        }
        b.file("zz-bad.toml", "[[service]]\nname = \"shop/web\"\nvip = \"198.18.0.21\"\nport = 80\n");
        let run = b.iptproxy(&["apply"]).code(1);
        assert!(
            run.stderr.contains("zz-bad.toml:1: service \"shop/web\": the name is already used (first at "),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("services.toml:"), "both files are named: {}", run.stderr);
        assert_eq!(b.save_all(), before, "{backend}: a bad config changed the rules");
    }
}

#[test]
fn a_failed_restore_names_the_chain_and_service_and_changes_nothing() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", EVERY_FEATURE);
        b.iptproxy(&["apply"]).ok();
        // Another tool jumps to one of our endpoint chains, so it cannot be deleted.
        let saved = b.save(false);
        let sep = rule_line(&saved, "-j DNAT --to-destination 198.19.0.8:3868").split(' ').nth(1).unwrap().to_string();
        b.ns.sh(&format!("iptables-{backend} -w -t nat -N ADMIN && iptables-{backend} -w -t nat -A ADMIN -j {sep}"));
        let before = b.save_all();

        b.file(
            "services.toml",
            &EVERY_FEATURE.replace("endpoints = [\"198.19.0.8:3868\"]", "endpoints = [\"198.19.0.18:3868\"]"),
        );
        let run = b.iptproxy(&["apply"]).code(1);
        assert!(run.stderr.contains("applying to the IPv4 nat table failed"), "{}", run.stderr);
        assert!(run.stderr.contains(&format!("at chain {sep}")), "{}", run.stderr);
        assert!(run.stderr.contains("service sctp-signal:3868/sctp"), "{}", run.stderr);
        assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
        assert_eq!(b.save_all(), before, "{backend}: a failed apply left a partial change");
    }
}

#[test]
fn cleanup_of_an_empty_host_does_nothing() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        let before = b.save_all();
        b.iptproxy(&["cleanup"]).ok();
        assert_eq!(b.save_all(), before);
    }
}

#[test]
fn removing_every_service_removes_every_rule() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", EVERY_FEATURE);
        b.iptproxy(&["apply"]).ok();
        b.remove("services.toml");
        b.iptproxy(&["apply"]).ok();
        let left = b.save_all();
        assert!(!left.contains("IPTPROXY"), "{backend}:\n{left}");
    }
}

#[test]
fn auto_backend_follows_the_rules_already_on_the_host() {
    // Legacy holds the host's rules: auto must pick it.
    let b = Bench::new("auto");
    b.file("services.toml", EVERY_FEATURE);
    b.ns.sh(FOREIGN_SETUP);
    b.ns.restore("legacy", false, FOREIGN_V4);
    let run = b.iptproxy_env(&["-v", "apply"], &[("RUST_LOG", "info")]).ok();
    assert!(run.stderr.contains("using iptables-legacy: "), "{}", run.stderr);
    assert!(b.ns.save("legacy", false).contains("IPTPROXY-SERVICES"));
    assert!(!b.ns.save("nft", false).contains("IPTPROXY"), "nothing may go to the other backend");

    // Once iptproxy's chains are somewhere, auto stays there.
    let mut b = Bench::new("nft");
    b.file("services.toml", EVERY_FEATURE);
    b.iptproxy(&["apply"]).ok();
    b.ns.sh(FOREIGN_SETUP);
    b.ns.restore("legacy", false, FOREIGN_V4);
    b.backend = "auto";
    let run = b.iptproxy_env(&["-v", "plan", "--detailed-exitcode"], &[("RUST_LOG", "info")]).ok();
    assert!(run.stderr.contains("using iptables-nft: iptproxy's chains are in the nf_tables tables"), "{}", run.stderr);
}

#[test]
fn plan_is_colored_only_on_a_terminal_and_never_with_no_color() {
    let b = Bench::new("nft");
    b.file("services.toml", EVERY_FEATURE);
    let piped = b.iptproxy_env(&["plan"], &[]).ok();
    assert!(!piped.stdout.contains('\x1b'), "no color into a pipe");
    assert!(piped.stdout.contains("\n+-A IPTPROXY-SERVICES "), "{}", piped.stdout);

    // `script` gives the command a terminal.
    let exe = crate::harness::bin("iptproxy").display().to_string();
    let dir = b.dir.path().display().to_string();
    let on_tty = |no_color: &str| {
        let cmd = format!("{no_color} {exe} -c {dir} --backend nft plan");
        b.ns.command("script").args(["-qec", &cmd, "/dev/null"]).env_remove("NO_COLOR").output().unwrap()
    };
    let colored = String::from_utf8_lossy(&on_tty("").stdout).into_owned();
    assert!(colored.contains("\x1b[32m+-A IPTPROXY-SERVICES "), "{colored}");
    let plain = String::from_utf8_lossy(&on_tty("NO_COLOR=1").stdout).into_owned();
    assert!(plain.contains("+-A IPTPROXY-SERVICES ") && !plain.contains('\x1b'), "{plain}");
}

#[test]
fn plan_as_json_describes_the_same_change() {
    let b = Bench::new("nft");
    b.file("services.toml", EVERY_FEATURE);
    b.iptproxy(&["apply"]).ok();
    b.file("services.toml", &EVERY_FEATURE.replace("\"198.19.0.7\"]", "\"198.19.0.7\", \"198.19.0.17\"]"));
    let out = b.iptproxy(&["plan", "--json"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["changes"], true);
    assert_eq!(v["summary"]["chains_added"], 1);
    let chains = v["tables"][0]["chains"].as_array().unwrap();
    let created = chains.iter().find(|c| c["action"] == "create").unwrap();
    assert_eq!(created["service"], "dns:53/udp");
    assert!(created["after"][1].as_str().unwrap().ends_with("--to-destination 198.19.0.17:53"));
}
