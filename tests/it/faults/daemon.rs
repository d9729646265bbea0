//! The same faults under `iptproxyd`: it says what failed, retries, and converges once the
//! fault clears; killed in the middle of an apply, it converges after a restart.

use std::fs;

use crate::daemon::running::Running;
use crate::fixtures::{EVERY_FEATURE, many_services};
use crate::harness::{BACKENDS, Bench};

use super::{Wrappers, real_tool};

fn in_sync(b: &Bench) -> bool {
    b.iptproxy(&["plan", "--detailed-exitcode"]).code == 0
}

/// Timers out of the way: only the faults and the retries make things happen.
const QUIET: &str = "[settings]\ncanary_interval = \"1h\"\nresync_interval = \"1h\"\n";

#[test]
fn killed_in_the_middle_of_a_large_apply_the_daemon_converges_after_a_restart() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("settings.toml", QUIET);
        for (name, text) in many_services(1200, 2, 200) {
            b.file(&name, &text);
        }
        let w = Wrappers::new();
        // On nf_tables, the second transaction of the first sync (the first is committed);
        // legacy writes nat in one transaction, killed while it is being written.
        let call = if backend == "nft" { 2 } else { 1 };
        w.wrap(&format!("iptables-{backend}-restore"), &format!("if [ $CALL -eq {call} ]; then kill -9 $PPID; fi"));
        let mut d = Running::start(&b, &[("PATH", &w.path())]);
        let status = d.wait_exit();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{backend}: {}", d.log());
        assert!(!in_sync(&b), "{backend}: stopped halfway");
        if backend == "nft" {
            assert!(b.save(false).contains(":IPTPROXY-SEP-"), "nft: the first transaction is committed");
        }

        let _d = Running::ready(&b);
        assert!(in_sync(&b), "{backend}");
        for table in b.save(false).split("\n*").chain(b.save(true).split("\n*")) {
            let mut seen = std::collections::HashSet::new();
            let doubled: Vec<&str> = table.lines().filter(|l| l.starts_with("-A ") && !seen.insert(*l)).collect();
            assert!(doubled.is_empty(), "{backend}: doubled rules: {doubled:?}");
        }
    }
}

#[test]
fn iptables_save_garbage_is_retried_until_it_clears() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", &EVERY_FEATURE.replace("[settings]\n", QUIET));
        let w = Wrappers::new();
        w.wrap(&format!("iptables-{backend}-save"), "if [ $CALL -le 2 ]; then echo '*nat'; echo 'garbage'; exit 0; fi");
        let mut d = Running::start(&b, &[("PATH", &w.path())]);
        d.wait_log("iptables-save output, line 2", 1);
        d.wait_log("applied after 2 failed attempts", 1);
        assert!(in_sync(&b), "{backend}: {}", d.log());
    }
}

#[test]
fn a_missing_iptables_restore_is_retried_until_it_is_installed() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", &EVERY_FEATURE.replace("[settings]\n", QUIET));
        // A PATH with every tool the daemon and the bench use except the restore tools.
        let path = tempfile::tempdir().unwrap();
        let tools = ["ip", "conntrack", "iptables-{b}", "ip6tables-{b}", "iptables-{b}-save", "ip6tables-{b}-save"];
        for tool in tools.map(|t| t.replace("{b}", backend)) {
            std::os::unix::fs::symlink(real_tool(&tool), path.path().join(&tool)).unwrap();
        }
        let mut d = Running::start(&b, &[("PATH", path.path().to_str().unwrap())]);
        d.wait_log(&format!("iptables-{backend}-restore not found on PATH"), 2);
        for tool in [format!("iptables-{backend}-restore"), format!("ip6tables-{backend}-restore")] {
            fs::copy(real_tool(&tool), path.path().join(&tool)).unwrap();
        }
        d.wait_log("failed attempts", 1);
        assert!(in_sync(&b), "{backend}: {}", d.log());
    }
}

#[test]
fn another_writer_during_a_sync_is_found_and_repaired_at_once() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", &EVERY_FEATURE.replace("[settings]\n", QUIET));
        b.iptproxy(&["apply"]).ok();
        let save = b.save(false);
        let web = save.lines().find(|l| l.contains("dns:53/udp cluster IP")).unwrap();
        let svc = web.rsplit(' ').next().unwrap();
        // The daemon starts with a change to make: the service chain is edited by position.
        let changed = EVERY_FEATURE
            .replace("[settings]\n", QUIET)
            .replace("[\"198.19.0.5:53\",", "[\"198.19.0.15:53\", \"198.19.0.5:53\",");
        b.file("services.toml", &changed);
        let w = Wrappers::new();
        w.wrap(
            &format!("iptables-{backend}-restore"),
            &format!("if [ $CALL -eq 1 ]; then iptables-{backend} -w -t nat -I {svc} 1 -m comment --comment intruder -j RETURN; fi"),
        );
        let mut d = Running::start(&b, &[("PATH", &w.path())]);
        d.wait_log(&format!("another program changed IPv4 nat {svc}"), 1);
        d.wait_log("start: Applied", 1);
        assert!(!b.save(false).contains("intruder"), "{backend}: {}", d.log());
        assert!(in_sync(&b), "{backend}: {}", d.log());
    }
}
