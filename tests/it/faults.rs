//! Faults of iptables, at the command line: the real binary, run with scripts named like
//! the iptables tools first on its PATH, which do the fault and then run the real tool.
//! Each fault: a clear error, no partial state, and the next run converges once it clears.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};

use crate::fixtures::{EVERY_FEATURE, many_services};
use crate::harness::{BACKENDS, Bench};

mod daemon;

/// A directory of wrapper scripts to put first on PATH: how tests of the binaries (the
/// daemon's too) inject faults where iptproxy runs iptables.
pub(crate) struct Wrappers {
    dir: tempfile::TempDir,
}

impl Wrappers {
    pub(crate) fn new() -> Wrappers {
        Wrappers { dir: tempfile::tempdir().unwrap() }
    }

    /// `tool` runs `before` (sh; `$REAL` is the real tool, `$CALL` how many times the tool
    /// was called, this one included), then the real tool with the same arguments and input.
    pub(crate) fn wrap(&self, tool: &str, before: &str) {
        let real = real_tool(tool);
        let count = self.dir.path().join(format!("{tool}.calls"));
        let script = format!(
            "#!/bin/sh\nREAL={real}\nCALL=$(( $(cat {count} 2>/dev/null || echo 0) + 1 ))\necho $CALL > {count}\n\
             {before}\nexec \"$REAL\" \"$@\"\n",
            count = count.display()
        );
        let path = self.dir.path().join(tool);
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub(crate) fn unwrap_all(&self) {
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }

    /// PATH with the wrappers first.
    pub(crate) fn path(&self) -> String {
        format!("{}:{}", self.dir.path().display(), std::env::var("PATH").unwrap_or_default())
    }
}

pub(crate) fn real_tool(tool: &str) -> String {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(Path::new(&path).is_absolute(), "{tool} is not installed");
    path
}

/// Our chains in `save` output, each with its rules: what must be whole after any fault.
fn our_chains(save: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut chains = std::collections::BTreeMap::new();
    for line in save.lines() {
        if let Some(decl) = line.strip_prefix(":IPTPROXY-") {
            chains.insert(format!("IPTPROXY-{}", decl.split(' ').next().unwrap()), Vec::new());
        } else if let Some(rule) = line.strip_prefix("-A IPTPROXY-") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            chains.entry(format!("IPTPROXY-{chain}")).or_insert_with(Vec::new).push(spec.to_string());
        }
    }
    chains
}

#[test]
fn a_restore_failing_halfway_leaves_only_whole_chains_and_the_next_run_converges() {
    // Only nf_tables splits a table into several transactions; legacy writes each table in
    // one, and a failed one leaves no trace (core::a_failed_restore_...).
    for backend in ["nft"] {
        let b = Bench::new(backend);
        // About 12,000 lines in nat: two transactions.
        for (name, text) in many_services(1200, 2, 200) {
            b.file(&name, &text);
        }
        let w = Wrappers::new();
        let restore = format!("iptables-{backend}-restore");
        w.wrap(
            &restore,
            "if [ $CALL -eq 2 ]; then { sed '$d'; echo '-A IPTPROXY-NO-SUCH-CHAIN -j ACCEPT'; echo COMMIT; } \
             | \"$REAL\" \"$@\"; exit $?; fi",
        );
        let run = b.iptproxy_env(&["apply"], &[("PATH", &w.path())]).code(1);
        assert!(run.stderr.contains("applying to the IPv4 nat table failed"), "{}", run.stderr);
        assert!(run.stderr.contains("1 earlier transaction(s) were committed"), "{}", run.stderr);
        let partial = b.save(false);

        w.unwrap_all();
        b.iptproxy(&["apply"]).ok();
        let whole = our_chains(&b.save(false));
        let half = our_chains(&partial);
        assert!(!half.is_empty() && half.len() < whole.len(), "{backend}: the first transaction committed");
        for (chain, rules) in &half {
            assert_eq!(Some(rules), whole.get(chain), "{backend}: {chain} was left half-written");
        }
        assert!(!partial.contains("-j IPTPROXY-SERVICES"), "{backend}: nothing jumps into a partial ruleset");
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
    }
}

/// The SVC chain of a service, from `save` output.
fn service_chain(save: &str, id: &str) -> String {
    let line = save.lines().find(|l| l.contains(&format!("{id} cluster IP"))).expect("service rule");
    line.rsplit(' ').next().unwrap().to_string()
}

#[test]
fn another_writer_between_read_and_write_is_found_and_repaired() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", EVERY_FEATURE);
        b.iptproxy(&["apply"]).ok();
        let svc = service_chain(&b.save(false), "dns:53/udp");
        // A new first endpoint: the service chain is edited by position.
        b.file(
            "services.toml",
            &EVERY_FEATURE.replace("[\"198.19.0.5:53\",", "[\"198.19.0.15:53\", \"198.19.0.5:53\","),
        );
        let w = Wrappers::new();
        w.wrap(
            &format!("iptables-{backend}-restore"),
            &format!(
                "if [ $CALL -eq 1 ]; then iptables-{backend} -w -t nat -I {svc} 1 -m comment --comment intruder -j RETURN; fi"
            ),
        );
        let run = b.iptproxy_env(&["apply"], &[("PATH", &w.path())]).ok();
        assert!(run.stdout.contains("Another program changed iptproxy's chains during the apply"), "{}", run.stdout);
        assert!(run.stderr.contains(&format!("another program changed IPv4 nat {svc}")), "{}", run.stderr);
        let save = b.save(false);
        assert!(!save.contains("intruder"), "{backend}: the other writer's rule is still in our chain:\n{save}");
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
    }
}

#[test]
fn garbage_or_an_incompatible_table_from_iptables_save_changes_nothing() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", EVERY_FEATURE);
        b.iptproxy(&["apply"]).ok();
        b.file("services.toml", &EVERY_FEATURE.replace("198.19.0.8:3868", "198.19.0.18:3868"));
        let before = b.save_all();
        let w = Wrappers::new();
        let save = format!("iptables-{backend}-save");
        for (output, says) in [
            ("printf '*nat\\n:PREROUTING ACCEPT [0:0]\\n%s\\n' 'garbage -A'; exit 0", "iptables-save output, line 3"),
            ("printf '*nat\\n-A X -j Y\\n'; exit 0", "output ended inside table nat (no COMMIT)"),
            (
                "\"$REAL\" \"$@\" | sed 's/^\\*nat$/# Table `nat'\"'\"' is incompatible, use '\"'\"'nft'\"'\"' tool./'; exit 0",
                "cannot show table nat",
            ),
            ("echo 'iptables-save: broken' >&2; exit 1", "iptables-save: broken"),
        ] {
            w.wrap(&save, output);
            let run = b.iptproxy_env(&["apply"], &[("PATH", &w.path())]).code(1);
            assert!(run.stderr.contains(says), "{backend}: {says}: {}", run.stderr);
            assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
            assert_eq!(b.save_all(), before, "{backend}: {says}: the rules changed");
        }
        w.unwrap_all();
        b.iptproxy(&["apply"]).ok();
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
    }
}

#[test]
fn a_missing_iptables_is_a_clear_error() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        b.file("services.toml", EVERY_FEATURE);
        let before = b.save_all();
        // A PATH with `ip` (to enter the namespace) and no iptables.
        let path = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(real_tool("ip"), path.path().join("ip")).unwrap();
        let run = b.iptproxy_env(&["apply"], &[("PATH", path.path().to_str().unwrap())]).code(1);
        assert!(
            run.stderr.contains(&format!("iptables-{backend}-save not found on PATH: install iptables")),
            "{}",
            run.stderr
        );
        assert_eq!(b.save_all(), before);
        b.iptproxy(&["apply"]).ok();
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
    }
}

/// A process holding a lock file with `flock`, killed when dropped.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iptables-nft takes no xtables lock, so this is the legacy backend's fault. The lock is
/// a private file (XTABLES_LOCKFILE), never the host's /run/xtables.lock.
#[test]
fn the_xtables_lock_held_past_the_wait_changes_nothing_and_the_next_run_converges() {
    let b = Bench::new("legacy");
    let settings = "[settings]\nlock_wait = \"1s\"\n";
    b.file("services.toml", &EVERY_FEATURE.replace("[settings]\n", settings));
    let lock = b.dir.path().join("xtables.lock");
    let lock_env = [("XTABLES_LOCKFILE", lock.to_str().unwrap())];
    b.iptproxy_env(&["apply"], &lock_env).ok();
    b.file(
        "services.toml",
        &EVERY_FEATURE.replace("[settings]\n", settings).replace("198.19.0.8:3868", "198.19.0.18:3868"),
    );
    let before = b.save_all();

    // One process that holds the lock itself (`flock FILE cmd` would leave it with its child).
    let hold = format!("exec 9>{}; flock 9; exec sleep 600", lock.display());
    let holder = Holder(Command::new("sh").args(["-c", &hold]).spawn().unwrap());
    // Held once flock has created the file and taken the lock; `flock -n` then fails.
    while Command::new("flock").args(["-n"]).arg(&lock).arg("true").status().unwrap().success() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let run = b.iptproxy_env(&["apply"], &lock_env).code(1);
    assert!(run.stderr.contains("xtables lock"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
    assert_eq!(b.save_all(), before);

    drop(holder);
    b.iptproxy_env(&["apply"], &lock_env).ok();
    b.iptproxy_env(&["plan", "--detailed-exitcode"], &lock_env).ok();
}

/// The same faults through the library's fault-injecting runner, in process: how the
/// daemon's tests drive them.
mod in_process {
    use iptproxy::backend::Backend;
    use iptproxy::config;
    use iptproxy::exec::System;
    use iptproxy::exec::fault::{Fault, Faulty};
    use iptproxy::reconcile::{self, SyncError};
    use iptproxy::render;
    use iptproxy::ruleset::{Family, Ruleset};
    use iptproxy::save::SaveError;

    use crate::fixtures::EVERY_FEATURE;
    use crate::harness::Netns;

    fn desired(text: &str) -> Ruleset {
        render::render(&config::from_sources(vec![("a.toml".into(), text.into())]).unwrap())
    }

    fn live(runner: &dyn iptproxy::exec::Runner) -> Ruleset {
        reconcile::read_live(runner, |_| true).unwrap()
    }

    #[test]
    fn each_fault_leaves_a_consistent_state_and_clearing_it_converges() {
        for backend in [Backend::Nft, Backend::Legacy] {
            let ns = Netns::new();
            ns.enter(|| {
                let runner = Faulty::new(System::new(backend, 5));
                let want = desired(EVERY_FEATURE);

                // The second of several small transactions fails.
                runner.inject(Fault::RestoreFails { nth: 2 });
                match reconcile::converge(&runner, &want, 30, 3) {
                    Err(SyncError::Restore(f)) => assert_eq!(f.committed, 1, "{f}"),
                    other => panic!("{backend}: {other:?}"),
                }
                let half = live(&runner);
                let nat = half.table(Family::Ipv4, "nat").unwrap();
                let ours: Vec<_> = nat.chains.iter().filter(|(n, _)| n.starts_with("IPTPROXY-")).collect();
                assert!(!ours.is_empty(), "{backend}: the first transaction committed");
                for (name, chain) in ours {
                    let whole = &want.table(Family::Ipv4, "nat").unwrap().chains[name];
                    assert_eq!(chain.rules, whole.rules, "{backend}: {name} is half-written");
                }
                runner.clear();
                reconcile::converge(&runner, &want, 30, 3).unwrap();
                assert!(iptproxy::plan::plan(&want, &live(&runner)).is_empty());

                // Another writer slips a rule into a chain we are about to edit by position.
                let services = &want.table(Family::Ipv4, "nat").unwrap().chains["IPTPROXY-SERVICES"];
                let web = services.specs().find(|r| r.contains("shop/web:80/tcp cluster IP")).unwrap();
                let svc = web.rsplit(' ').next().unwrap().to_string();
                let tool = backend.program(Family::Ipv4, "");
                runner.inject(Fault::WriterBeforeRestore {
                    nth: 1,
                    writer: Box::new(move || {
                        let args = ["-w", "-t", "nat", "-I", &svc, "1", "-j", "RETURN"];
                        assert!(std::process::Command::new(&tool).args(args).status().unwrap().success());
                    }),
                });
                let changed = desired(&EVERY_FEATURE.replace("weight = 3", "weight = 4"));
                let done = reconcile::converge(&runner, &changed, 30, 3).unwrap();
                assert_eq!(done.applied.len(), 2, "{backend}: the drift was found and planned again");
                assert!(iptproxy::plan::plan(&changed, &live(&runner)).is_empty());

                // iptables-save hides a table, or the binaries are gone: nothing is changed.
                let before = live(&runner);
                runner.inject(Fault::SaveOutput("# Table `nat' is incompatible, use 'nft' tool.\n".into()));
                match reconcile::converge(&runner, &want, 30, 3) {
                    Err(SyncError::Save(SaveError::Incompatible { table, .. })) => assert_eq!(table, "nat"),
                    other => panic!("{backend}: {other:?}"),
                }
                runner.clear();
                runner.inject(Fault::Missing);
                let e = reconcile::converge(&runner, &want, 30, 3).unwrap_err();
                assert!(e.to_string().contains("not found on PATH"), "{e}");
                runner.clear();
                assert_eq!(live(&runner), before, "{backend}: a fault changed the rules");
                reconcile::converge(&runner, &want, 30, 3).unwrap();
                assert!(iptproxy::plan::plan(&want, &live(&runner)).is_empty());
            });
        }
    }
}

/// SIGKILL in the middle of a large apply (sent by the restore wrapper to its parent, so it
/// lands at the same point every time: the first transaction committed, the second being
/// written), then a rerun: it converges, and no rule is doubled.
#[test]
fn killed_in_the_middle_of_a_large_apply_a_rerun_converges_without_duplicates() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        for (name, text) in many_services(1200, 2, 200) {
            b.file(&name, &text);
        }
        let w = Wrappers::new();
        w.wrap(&format!("iptables-{backend}-restore"), "if [ $CALL -eq 2 ]; then kill -9 $PPID; fi");
        let run = b.iptproxy_env(&["apply"], &[("PATH", &w.path())]);
        assert_eq!(run.code, -1, "{backend}: killed by a signal\n{}", run.stderr);
        assert!(b.save(false).contains(":IPTPROXY-SEP-"), "{backend}: the first transaction committed");

        b.iptproxy(&["apply"]).ok();
        let save = b.save(false);
        // Per table: the canary chains of nat and filter hold the same rule.
        let mut seen = std::collections::HashSet::new();
        let mut table = "";
        let doubled: Vec<&str> = save
            .lines()
            .filter(|l| {
                if l.starts_with('*') {
                    table = l;
                }
                l.starts_with("-A ") && !seen.insert((table, *l))
            })
            .collect();
        assert!(doubled.is_empty(), "{backend}: doubled rules: {doubled:?}");
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
    }
}
