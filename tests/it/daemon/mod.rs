//! `iptproxyd`, the real binary in a namespace of its own, talking to a real
//! `NOTIFY_SOCKET`: it applies the files, follows their changes, rejects bad ones, repairs
//! what others flush or delete, obeys signals and retries failures. Each test runs on both
//! the nf_tables and the legacy backend.

mod figures;
pub(crate) mod running;

use nix::sys::signal::Signal;

use crate::fixtures::EVERY_FEATURE;
use crate::harness::{BACKENDS, Bench};
use running::{Running, has_line, status};

const WEB: &str = "[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\n\
                   endpoints = [\"198.19.0.2:8080\", \"198.19.0.3:8080\"]\n";
const DNS: &str = "[[service]]\nname = \"dns\"\nprotocol = \"udp\"\nvip = \"198.18.0.53\"\nport = 53\n\
                   endpoints = [\"198.19.0.5:53\"]\n";

/// Settings with the daemon's intervals; `1h` keeps a timer out of a test's way.
fn settings(canary: &str, resync: &str) -> String {
    format!("[settings]\ncanary_interval = \"{canary}\"\nresync_interval = \"{resync}\"\n")
}

/// A bench with `web` and `dns` in two files, and the daemon's intervals.
fn bench(backend: &'static str, canary: &str, resync: &str) -> Bench {
    let b = Bench::new(backend);
    b.file("settings.toml", &settings(canary, resync));
    b.file("web.toml", WEB);
    b.file("dns.toml", DNS);
    b
}

/// Whether the live rules are exactly what the files say, as `iptproxy plan` sees it.
fn in_sync(b: &Bench) -> bool {
    b.iptproxy(&["plan", "--detailed-exitcode"]).code == 0
}

#[test]
fn ready_comes_only_after_the_first_apply() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::start(&b, &[]);
        let ready = d.wait_note("READY=1", |n| has_line(n, "READY=1"));
        // Nothing has touched the rules since but the daemon: they were in place at READY.
        assert!(in_sync(&b), "{backend}: READY=1 before the rules were applied");
        let shown = status(&ready).unwrap_or_default();
        assert!(shown.starts_with("2 services, 3 endpoints; applied 31 changes "), "{ready}");
        assert_eq!(d.notes().iter().filter(|n| has_line(n, "READY=1")).count(), 1);
        let state = d.state();
        assert_eq!(state["in_sync"], true);
        assert_eq!(state["config"]["services"], 2);
        assert_eq!(state["last_apply"]["reason"], "start");
    }
}

#[test]
fn edits_by_rename_new_files_and_removed_files_are_applied() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);

        // An editor's save: write a temporary, rename it over the file.
        b.file("web.toml", &WEB.replace("198.19.0.3:8080", "198.19.0.4:8080"));
        d.wait_log("files changed: Applied", 1);
        assert!(in_sync(&b), "{backend}: {}", d.log());
        assert!(b.save(false).contains("--to-destination 198.19.0.4:8080"));
        assert!(!b.save(false).contains("198.19.0.3:8080"));

        b.file("more.toml", &WEB.replace("\"web\"", "\"more\"").replace("198.18.0.10", "198.18.0.11"));
        d.wait_log("files changed: Applied", 2);
        assert!(in_sync(&b) && b.save(false).contains("more:80/tcp cluster IP"), "{backend}");

        b.remove("dns.toml");
        d.wait_log("files changed: Applied", 3);
        assert!(in_sync(&b) && !b.save(false).contains("dns:53/udp"), "{backend}");
        assert_eq!(d.count("files changed: Applied"), 3);
    }
}

#[test]
fn a_configmap_data_symlink_swap_is_applied() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        // The layout of a Kubernetes ConfigMap volume: files are links through `..data`.
        let publish = |version: &str, web: &str| {
            let dir = b.path(&format!("..{version}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("web.toml"), web).unwrap();
            std::fs::write(dir.join("settings.toml"), settings("1h", "1h")).unwrap();
            std::os::unix::fs::symlink(format!("..{version}"), b.path("..data_tmp")).unwrap();
            std::fs::rename(b.path("..data_tmp"), b.path("..data")).unwrap();
        };
        publish("v1", WEB);
        for name in ["web.toml", "settings.toml"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), b.path(name)).unwrap();
        }
        let mut d = Running::ready(&b);
        assert!(in_sync(&b));

        publish("v2", &WEB.replace("198.19.0.3:8080", "198.19.0.9:8080"));
        d.wait_log("files changed: Applied", 1);
        assert!(in_sync(&b), "{backend}");
        assert!(b.save(false).contains("--to-destination 198.19.0.9:8080"), "{backend}");
    }
}

#[test]
fn a_config_dir_replaced_or_removed_and_made_again_is_watched_again() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);
        let dir = b.dir.path().to_path_buf();
        let (new, old) = (dir.with_extension("new"), dir.with_extension("old"));
        let write_all = |at: &std::path::Path, web: &str| {
            std::fs::create_dir(at).unwrap();
            std::fs::write(at.join("settings.toml"), settings("1h", "1h")).unwrap();
            std::fs::write(at.join("web.toml"), web).unwrap();
            std::fs::write(at.join("dns.toml"), DNS).unwrap();
        };

        // A config manager's way: the new version built beside it, then moved into place.
        write_all(&new, &WEB.replace("198.19.0.3:8080", "198.19.0.4:8080"));
        std::fs::rename(&dir, &old).unwrap();
        std::fs::rename(&new, &dir).unwrap();
        d.wait_log("files changed: Applied", 1);
        assert!(d.log().contains("was replaced; watching the new one"), "{backend}: {}", d.log());
        assert!(in_sync(&b) && b.save(false).contains("--to-destination 198.19.0.4:8080"), "{backend}");
        std::fs::remove_dir_all(&old).unwrap();

        // Removed, then made again: the rules stay meanwhile, the new files are applied.
        let before = b.save(false);
        std::fs::remove_dir_all(&dir).unwrap();
        d.wait_until("the removal seen", |d| d.state()["config_error"].is_object());
        assert_eq!(b.save(false), before, "{backend}: the last good rules stay");
        write_all(&dir, &WEB.replace("198.19.0.3:8080", "198.19.0.5:8080"));
        d.wait_log("files changed: Applied", 2);
        assert!(in_sync(&b) && b.save(false).contains("--to-destination 198.19.0.5:8080"), "{backend}");
    }
}

#[test]
fn a_burst_of_writes_gives_one_reload_and_dotfiles_and_temporaries_none() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);

        // Ignored: hidden files, editor swap and backup files, anything not *.toml.
        for name in [".web.toml.swp", "web.toml~", "#web.toml#", ".hidden.toml", "notes.txt"] {
            std::fs::write(b.path(name), "this is not toml [").unwrap();
        }
        // A burst: ten files written as hidden temporaries (ignored), then renamed in place
        // back to back, as a deployment tool would. How close together renames must come
        // to be one reload is the settle's business (its unit tests, on a clock they move);
        // here a file held open for writing keeps the reload back until the burst is done,
        // so the count does not depend on how this machine schedules the loop.
        use std::io::Write;
        let mut held = std::fs::File::create(b.path("held.toml")).unwrap();
        held.write_all(b"# held open while the burst lands\n").unwrap();
        held.flush().unwrap();
        d.wait_log("to be closed before reloading", 1);
        for i in 0..10 {
            let svc =
                WEB.replace("\"web\"", &format!("\"burst-{i}\"")).replace("198.18.0.10", &format!("198.18.1.{i}"));
            std::fs::write(b.path(&format!(".burst-{i}.tmp")), svc).unwrap();
        }
        for i in 0..10 {
            std::fs::rename(b.path(&format!(".burst-{i}.tmp")), b.path(&format!("burst-{i}.toml"))).unwrap();
        }
        drop(held);
        d.wait_log("files changed: Applied", 1);
        assert!(in_sync(&b), "{backend}");
        // A later, separate change marks the end of anything the burst could still cause.
        b.remove("dns.toml");
        d.wait_log("files changed: Applied", 2);
        let log = d.log();
        assert_eq!(d.count("config files changed; reloading"), 2, "{backend}: one reload per burst\n{log}");
        assert!(!log.contains("error"), "{backend}: an ignored file was read\n{log}");
    }
}

#[test]
fn a_file_open_for_writing_is_not_read_until_closed() {
    use std::io::Write;
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);
        let before = b.save_all();

        // Written in place, in two parts: the first part alone is valid and has fewer services.
        let mut file = std::fs::File::create(b.path("web.toml")).unwrap();
        file.write_all(WEB.replace("198.19.0.3:8080", "198.19.0.7:8080").as_bytes()).unwrap();
        file.flush().unwrap();
        d.wait_log("to be closed before reloading", 1);
        // Give a daemon that would not wait ample time to apply the half.
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert_eq!(b.save_all(), before, "{backend}: a file still being written was applied");
        file.write_all(b"\n").unwrap();
        file.write_all(DNS.replace("\"dns\"", "\"dns2\"").replace("198.18.0.53", "198.18.0.54").as_bytes()).unwrap();
        drop(file);

        d.wait_log("files changed: Applied", 1);
        assert!(in_sync(&b), "{backend}");
        let rules = b.save(false);
        assert!(rules.contains("198.19.0.7:8080") && rules.contains("dns2:53/udp"), "{backend}");
        assert_eq!(d.count("files changed: Applied"), 1, "{backend}: only the whole file was applied");
    }
}

#[test]
fn a_bad_file_keeps_the_rules_names_the_file_in_status_and_recovers() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);
        let before = b.save_all();

        // Half-merged: a merge left its conflict markers in the file.
        let merged = format!("<<<<<<< HEAD\n{WEB}=======\n{}>>>>>>> theirs\n", WEB.replace("0.3:8080", "0.8:8080"));
        b.file("web.toml", &merged);
        let note =
            d.wait_note("STATUS= with the config error", |n| status(n).is_some_and(|s| s.contains("config error")));
        let path = b.path("web.toml");
        let shown = status(&note).unwrap();
        assert!(shown.starts_with(&format!("config error: {}:1: ", path.display())), "{backend}: {shown}");
        assert!(shown.contains("(keeping the last good rules); 2 services, 3 endpoints"), "{shown}");
        // The log says it too (read from a pipe, so it may trail the notification).
        d.wait_log(&format!("{}:1:", path.display()), 1);
        assert_eq!(b.save_all(), before, "{backend}: a bad config changed the rules");
        let state_file = d.state_file();
        let env = [("IPTPROXY_STATE_FILE", state_file.to_str().unwrap())];
        let degraded = b.iptproxy_env(&["status"], &env).code(2);
        assert!(degraded.stdout.contains("config error: since "), "{}", degraded.stdout);
        assert!(degraded.stdout.contains(&format!("{}:1:", path.display())), "{}", degraded.stdout);

        // A conflict across files (a service moved, its old copy not yet removed).
        b.file("web.toml", WEB);
        b.file("zz-copy.toml", WEB);
        d.wait_note("STATUS= naming both files", |n| status(n).is_some_and(|s| s.contains("zz-copy.toml:1:")));
        assert_eq!(b.save_all(), before, "{backend}: a half-moved config changed the rules");

        b.remove("zz-copy.toml");
        b.file("web.toml", &WEB.replace("198.19.0.3:8080", "198.19.0.6:8080"));
        d.wait_log("files changed: Applied", 1);
        d.wait_note("STATUS= without the error", |n| status(n).is_some_and(|s| !s.contains("error")));
        assert!(in_sync(&b), "{backend}");
        assert!(b.save(false).contains("198.19.0.6:8080"));
        assert!(d.log().contains("the configuration is valid again"));
    }
}

/// Starts a daemon on every feature (both families, nat and filter) with a 1 s canary and
/// no resync in the way, runs `wipe` in the namespace and checks that the canary named
/// `expected` and that everything came back.
fn canary_repairs(wipe: impl Fn(&str) -> String, expected: &[&str]) {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        let config = EVERY_FEATURE.replacen("[settings]\n", &settings("1s", "1h"), 1);
        b.file("services.toml", &config);
        let mut d = Running::ready(&b);
        b.ns.sh(&wipe(backend));
        for hit in expected {
            d.wait_log(&format!("canary: {hit}; re-applying every rule"), 1);
        }
        d.wait_until("the rules to be back", |_| in_sync(&b));
        assert_eq!(d.count("resync:"), 0, "{backend}: the canary repaired it, not the resync");
        d.wait_until("the state file to count the hits", |d| d.state()["canary_hits"] == expected.len());
    }
}

#[test]
fn canary_repairs_a_flush_of_nat_alone() {
    canary_repairs(|b| format!("iptables-{b} -w -t nat -F"), &["the IPv4 nat table was flushed"]);
}

/// `-F` then `-X` of whole tables, as a firewall reload does, in one transaction so that
/// a canary check cannot repair the table between the two (and make `-X` fail).
fn flush_and_delete(tool: &str, backend: &str, tables: &[&str]) -> String {
    let blocks: String = tables.iter().map(|t| format!("*{t}\\n-F\\n-X\\nCOMMIT\\n")).collect();
    format!("printf '{blocks}' | {tool}-{backend}-restore --noflush -w")
}

#[test]
fn canary_repairs_a_deletion_of_the_nat_chains() {
    canary_repairs(|b| flush_and_delete("iptables", b, &["nat"]), &["the IPv4 nat table was wiped (chains deleted)"]);
}

#[test]
fn canary_repairs_a_deletion_of_the_filter_chains() {
    canary_repairs(
        |b| flush_and_delete("iptables", b, &["filter"]),
        &["the IPv4 filter table was wiped (chains deleted)"],
    );
}

#[test]
fn canary_repairs_every_table_of_both_families_wiped() {
    canary_repairs(
        |b| match b {
            // On nf_tables a firewall reload may drop the tables themselves, all at once.
            "nft" => "nft flush ruleset".to_string(),
            _ => {
                let all = ["raw", "mangle", "nat", "filter"];
                format!("{} && {}", flush_and_delete("iptables", b, &all), flush_and_delete("ip6tables", b, &all))
            }
        },
        &[
            "the IPv4 nat table was wiped (chains deleted)",
            "the IPv4 filter table was wiped (chains deleted)",
            "the IPv6 nat table was wiped (chains deleted)",
            "the IPv6 filter table was wiped (chains deleted)",
        ],
    );
}

#[test]
fn a_hand_deleted_rule_is_repaired_at_the_next_resync() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1s");
        let mut d = Running::ready(&b);
        let rules = b.save(false);
        let sep = rules.lines().find(|l| l.contains("-j DNAT --to-destination 198.19.0.3:8080")).unwrap();
        let chain = sep.split(' ').nth(1).unwrap();
        b.ns.sh(&format!("iptables-{backend} -w -t nat -D {chain} 2"));
        d.wait_log("resync: the live rules had drifted; repaired. Applied: 1 chain changed; 1 rule added.", 1);
        assert!(in_sync(&b), "{backend}");
    }
}

#[test]
fn a_file_change_over_a_hand_edited_chain_is_read_back_and_repaired_at_once() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);
        let rules = b.save(false);
        let jump = rules.lines().find(|l| l.starts_with("-A IPTPROXY-SVC-") && l.contains("web:80/tcp")).unwrap();
        let chain = jump.split(' ').nth(1).unwrap();
        // Shifts the positions that the daemon's record of what it applied gives.
        b.ns.sh(&format!("iptables-{backend} -w -t nat -I {chain} 1 -s 198.18.9.9/32 -j RETURN"));

        // An endpoint appended: one rule inserted at the top, which the kernel accepts.
        b.file("web.toml", &WEB.replace("198.19.0.3:8080\"", "198.19.0.3:8080\", \"198.19.0.4:8080\""));
        d.wait_log("files changed: Applied", 1);
        let log = d.log();
        assert!(log.contains(&format!("{chain} did not read back as applied")), "{backend}: {log}");
        assert!(in_sync(&b), "{backend}: {log}");
        assert!(!b.save(false).contains("198.18.9.9"), "{backend}: the hand-made rule is gone");
    }
}

#[test]
fn sighup_reloads_and_resyncs_between_reloading_and_ready() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);
        // Drift that neither the canary nor a file change would repair.
        let rules = b.save(false);
        let sep = rules.lines().find(|l| l.contains("-j DNAT --to-destination 198.19.0.2:8080")).unwrap();
        b.ns.sh(&format!("iptables-{backend} -w -t nat -D {}", sep.trim_start_matches("-A ")));
        assert!(!in_sync(&b));

        d.signal(Signal::SIGHUP);
        let reloading = d.wait_note("RELOADING=1", |n| has_line(n, "RELOADING=1"));
        assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading}");
        d.wait_note("READY=1 after the reload", |n| has_line(n, "READY=1"));
        assert!(in_sync(&b), "{backend}: the reload did not resync");
        d.wait_log("SIGHUP: Applied: 1 chain changed; 1 rule added.", 1);
    }
}

#[test]
fn sigterm_stops_with_exit_0_and_leaves_the_rules_for_cleanup() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);
        let applied = b.save_all();
        d.signal(Signal::SIGTERM);
        d.wait_note("STOPPING=1", |n| has_line(n, "STOPPING=1"));
        let status = d.wait_exit();
        assert_eq!(status.code(), Some(0), "{backend}: {status}");
        assert_eq!(b.save_all(), applied, "{backend}: stopping changed the rules");
        assert!(b.iptproxy(&["cleanup"]).ok().stdout.starts_with("Removed "));
        assert!(!b.save_all().contains("IPTPROXY"), "{backend}");
    }
}

#[test]
fn a_failing_restore_is_retried_with_backoff_until_it_converges() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        // iptables-restore fails twice (as with a held lock), then works.
        let bin = tempfile::tempdir().unwrap();
        let counter = bin.path().join("count");
        let real = format!("/usr/sbin/iptables-{backend}-restore");
        let wrapper = format!(
            "#!/bin/sh\nn=$(cat {c} 2>/dev/null || echo 0)\necho $((n + 1)) > {c}\n\
             if [ \"$n\" -lt 2 ]; then echo 'injected failure: resource busy' >&2; exit 4; fi\nexec {real} \"$@\"\n",
            c = counter.display()
        );
        let script = bin.path().join(format!("iptables-{backend}-restore"));
        std::fs::write(&script, wrapper).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());

        let mut d = Running::start(&b, &[("PATH", &path)]);
        let failing =
            d.wait_note("STATUS= with the failure", |n| status(n).is_some_and(|s| s.contains("applying failed")));
        assert!(status(&failing).unwrap().contains("injected failure: resource busy"), "{failing}");
        let ready = d.wait_note("READY=1", |n| has_line(n, "READY=1"));
        assert!(in_sync(&b), "{backend}");
        let notes = d.notes().to_vec();
        let first_ready = notes.iter().position(|n| has_line(n, "READY=1"));
        let first_failure = notes.iter().position(|n| n == &failing);
        assert!(first_failure < first_ready, "{backend}: READY=1 came before the rules were applied: {notes:#?}");
        assert!(status(&ready).unwrap().starts_with("2 services, 3 endpoints; applied"), "{ready}");
        // Logged before READY=1, but read from a pipe, so they may trail it.
        d.wait_log("retry: applied after 2 failed attempts", 1);
        let log = d.log();
        assert!(log.contains("attempt 1 failed; retrying in 1 s"), "{log}");
        assert!(log.contains("attempt 2 failed; retrying in 2 s"), "{log}");
        assert_eq!(d.state()["apply_error"], serde_json::Value::Null, "{}", d.state());
    }
}

#[test]
fn a_held_xtables_lock_is_waited_out() {
    // The legacy backend's lock; a private lock file keeps other test runs out of it.
    let b = bench("legacy", "1h", "1h");
    b.file("settings.toml", &format!("{}lock_wait = \"1s\"\n", settings("1h", "1h")));
    let lock = b.dir.path().join("..xtables.lock");
    let file = std::fs::File::create(&lock).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let mut d = Running::start(&b, &[("XTABLES_LOCKFILE", lock.to_str().unwrap())]);
    d.wait_note("STATUS= with the lock failure", |n| status(n).is_some_and(|s| s.contains("xtables lock")));
    assert!(!in_sync(&b));
    drop(held);
    d.wait_note("READY=1", |n| has_line(n, "READY=1"));
    assert!(in_sync(&b));
}

/// A child process killed when dropped.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_watchdog_is_pinged_from_the_loop() {
    let b = bench("nft", "1h", "1h");
    let mut d = Running::start(&b, &[("WATCHDOG_USEC", "400000")]);
    d.wait_note("READY=1", |n| has_line(n, "READY=1"));
    for _ in 0..3 {
        d.wait_note("WATCHDOG=1", |n| has_line(n, "WATCHDOG=1"));
    }
}

#[test]
fn status_shows_the_state_and_traffic_per_service_and_endpoint() {
    for backend in BACKENDS {
        let b = bench(backend, "1h", "1h");
        let mut d = Running::ready(&b);
        // Local connections to the VIP go through nat OUTPUT; the endpoints are local too,
        // so each connection is refused at once, after its first packet was counted.
        b.ns.sh("ip route add local 198.18.0.0/15 dev lo");
        b.ns.command("bash")
            .args(["-c", "for i in $(seq 10); do (echo > /dev/tcp/198.18.0.10/80) 2>/dev/null; done; true"])
            .status()
            .unwrap();
        let env = [("IPTPROXY_STATE_FILE", d.state_file().to_str().unwrap().to_string())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = b.iptproxy_env(&["status"], &env).ok();
        let out = run.stdout;
        assert!(out.starts_with(&format!("iptproxyd: running (pid {}), iptables-{backend}", d.pid())), "{out}");
        assert!(out.contains("status:       2 services, 3 endpoints; applied 31 changes"), "{out}");
        let web = out.lines().find(|l| l.starts_with("web:80/tcp 198.18.0.10")).unwrap_or_else(|| panic!("{out}"));
        assert_eq!(web.split_whitespace().nth(2), Some("10"), "{web}");

        let json = b.iptproxy_env(&["status", "--json"], &env).ok().stdout;
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        let web = report["services"].as_array().unwrap().iter().find(|s| s["service"] == "web:80/tcp").unwrap();
        assert_eq!(web["connections"]["packets"], 10, "{json}");
        let endpoints = web["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 2);
        let spread: u64 = endpoints.iter().map(|e| e["connections"]["packets"].as_u64().unwrap()).sum();
        assert_eq!(spread, 10, "every connection went to one endpoint: {json}");
        assert_eq!(report["daemon"]["state"]["in_sync"], true);

        d.signal(Signal::SIGTERM);
        d.wait_exit();
        let stopped = b.iptproxy_env(&["status"], &env).code(3);
        assert!(stopped.stdout.starts_with("iptproxyd: NOT running"), "{}", stopped.stdout);
    }
}

#[test]
fn under_the_journal_log_lines_carry_a_priority_and_no_timestamp() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::MetadataExt;
    let b = bench("nft", "1h", "1h");
    let (read, write) = nix::unistd::pipe().unwrap();
    let meta = std::fs::File::from(write.try_clone().unwrap()).metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut cmd = b.ns.command(crate::harness::bin("iptproxyd"));
    cmd.arg("-c").arg(b.dir.path()).args(["--backend", "nft", "--state-file"]).arg(b.dir.path().join("..state"));
    cmd.env_remove("RUST_LOG").env_remove("NOTIFY_SOCKET").env("JOURNAL_STREAM", &stream);
    let child = cmd.stderr(std::process::Stdio::from(write)).stdout(std::process::Stdio::null()).spawn().unwrap();
    let _child = Holder(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(std::fs::File::from(read)).lines() {
            if line.map(|l| tx.send(l)).is_err() {
                break;
            }
        }
    });
    let next = || rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a log line from iptproxyd");
    assert_eq!(next(), "<6>using iptables-nft: chosen with --backend");
    let applied = std::iter::repeat_with(next).find(|l| l.contains("Applied")).unwrap();
    assert!(applied.starts_with("<6>start: Applied: "), "{applied}");
}
