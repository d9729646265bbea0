//! `apply --confirm`: kept when confirmed (from another shell, or Enter on its terminal),
//! otherwise iptproxy's previous rules come back exactly, and nobody else's are touched.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::fixtures::{EVERY_FEATURE, FOREIGN_SETUP, FOREIGN_V4, FOREIGN_V6};
use crate::harness::{BACKENDS, Bench, bin};

/// A config that changes most of what EVERY_FEATURE applied: a service gone, one new, an
/// endpoint moved, a setting changed.
fn changed() -> String {
    EVERY_FEATURE
        .replace("198.19.0.8:3868", "198.19.0.18:3868")
        .replace("name = \"empty6\"", "name = \"fresh6\"")
        .replace("cluster_cidrs = [", "masquerade_all = true\ncluster_cidrs = [")
        .replace("[[service]]\nname = \"dns\"", "[[service]]\nname = \"dns-renamed\"")
}

/// A bench with foreign rules and EVERY_FEATURE applied, and `changed()` in its config.
fn bench(backend: &'static str) -> (Bench, tempfile::TempDir) {
    let b = Bench::new(backend);
    b.ns.sh(FOREIGN_SETUP);
    b.ns.restore(backend, false, FOREIGN_V4);
    b.ns.restore(backend, true, FOREIGN_V6);
    b.file("services.toml", EVERY_FEATURE);
    b.iptproxy(&["apply"]).ok();
    b.file("services.toml", &changed());
    (b, tempfile::tempdir().unwrap())
}

/// `iptproxy apply --confirm TIMEOUT` started in the background, once it has applied.
fn start(b: &Bench, run: &tempfile::TempDir, timeout: &str) -> (Child, String) {
    let mut child =
        b.ns.command(bin("iptproxy"))
            .arg("-c")
            .arg(b.dir.path())
            .args(["--backend", b.backend, "apply", "--confirm", timeout])
            .env("IPTPROXY_RUN_DIR", run.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let (said, _) = prompt(&mut child);
    (child, said)
}

/// What `apply --confirm` printed up to its prompt, and the rest of its output.
fn prompt(child: &mut Child) -> (String, BufReader<ChildStdout>) {
    let mut said = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !said.contains("Confirm within") {
        assert!(out.read_line(&mut said).unwrap() > 0, "apply --confirm ended early: {said}");
    }
    (said, out)
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args(["-s", sig, &child.id().to_string()]).status().unwrap().success());
}

#[test]
fn confirmed_from_another_shell_the_new_rules_stay_even_after_a_hangup() {
    for backend in BACKENDS {
        let (b, run) = bench(backend);
        let (child, said) = start(&b, &run, "10m");
        assert!(said.starts_with("Applied: "), "{said}");
        // The operator's SSH session drops: that alone changes nothing.
        signal(&child, "HUP");
        let env = [("IPTPROXY_RUN_DIR", run.path().to_str().unwrap())];
        let confirmed = b.iptproxy_env(&["confirm"], &env).ok();
        assert!(confirmed.stdout.starts_with("Confirmed: the rules applied by iptproxy (pid "), "{}", confirmed.stdout);
        let (code, stderr) = finish(child);
        assert_eq!(code, 0, "{stderr}");
        b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
        let again = b.iptproxy_env(&["confirm"], &env).code(1);
        assert!(again.stderr.contains("no `iptproxy apply --confirm` is waiting"), "{}", again.stderr);
        assert_eq!(std::fs::read_dir(run.path()).unwrap().count(), 0, "the rendezvous files are gone");
    }
}

#[test]
fn not_confirmed_in_time_the_previous_rules_come_back_exactly() {
    for backend in BACKENDS {
        let (b, run) = bench(backend);
        let before = b.save_all();
        let env = [("IPTPROXY_RUN_DIR", run.path().to_str().unwrap())];
        let r = b.iptproxy_env(&["apply", "--confirm", "1s"], &env).code(1);
        assert!(r.stdout.starts_with("Applied: "), "{}", r.stdout);
        assert!(
            r.stderr.contains("not confirmed within 1s: the previous iptproxy rules were put back"),
            "{}",
            r.stderr
        );
        assert_eq!(b.save_all(), before, "{backend}: the rollback is not exact");
        b.iptproxy(&["plan", "--detailed-exitcode"]).code(2);
    }
}

#[test]
fn interrupted_it_rolls_back_at_once_and_from_nothing_to_nothing() {
    for backend in BACKENDS {
        let b = Bench::new(backend);
        let run = tempfile::tempdir().unwrap();
        b.file("services.toml", EVERY_FEATURE);
        let (child, _) = start(&b, &run, "10m");
        assert!(b.save_all().contains("IPTPROXY-SERVICES"), "applied while waiting");
        signal(&child, "TERM");
        let (code, stderr) = finish(child);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("interrupted: the previous iptproxy rules were put back"), "{stderr}");
        // (iptables-nft leaves the tables it made, empty: not rules.)
        let left = b.save_all();
        assert!(!left.contains("IPTPROXY") && !left.contains("-A "), "{backend}: rules were left behind:\n{left}");
    }
}

#[test]
fn enter_on_its_terminal_confirms() {
    let (b, run) = bench("nft");
    // script(1) gives the command a terminal and passes our input to it.
    let command =
        format!("{} -c {} --backend nft apply --confirm 10m", bin("iptproxy").display(), b.dir.path().display());
    let mut child =
        b.ns.command("script")
            .args(["-qefc", &command, "/dev/null"])
            .env("IPTPROXY_RUN_DIR", run.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let (said, mut out) = prompt(&mut child);
    assert!(said.contains("or Enter here"), "{said}");
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{said}{rest}");
    assert!(rest.contains("Confirmed: the new rules stay."), "{rest}");
    b.iptproxy(&["plan", "--detailed-exitcode"]).ok();
}
