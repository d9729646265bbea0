//! The benchmark command, run small so that it cannot rot: every row is measured, nothing
//! fails, and it leaves no namespace or file behind. (Its figures at scale are in
//! BENCHMARKS.md; it never runs at scale here.)

use std::process::{Command, Stdio};

#[test]
fn the_benchmark_runs_every_row_and_cleans_up() {
    for backend in crate::harness::BACKENDS {
        let child = Command::new(env!("CARGO_BIN_EXE_iptproxy-bench"))
            .args(["--services", "20", "--endpoints", "3", "--per-file", "7", "--backend", backend])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run iptproxy-bench");
        // Its namespaces and files are named after its pid.
        let pid = child.id();
        let out = child.wait_with_output().expect("wait for iptproxy-bench");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{backend}: {stdout}\n{stderr}");
        for row in [
            "| first sync",
            "| `iptables-save`",
            "| `iptproxy plan` (no change)",
            "own CPU: load the config",
            "own CPU: compare",
            "| one-endpoint edit, in process",
            "| one-endpoint edit through iptproxyd",
            "| iptproxyd no-op resync",
            "| iptproxyd peak RSS",
            "| no-op resync",
            "(everything in one transaction)",
            "(services chain + changed chains rewritten)",
        ] {
            assert!(stdout.contains(row), "{backend}: no {row:?} in\n{stdout}");
        }
        assert!(!stdout.contains("failed") && !stdout.contains("not measured"), "{backend}:\n{stdout}");

        let namespaces = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        let left = String::from_utf8_lossy(&namespaces.stdout);
        assert!(!left.contains(&format!("iptp-bench-{pid}-")), "{backend}: namespaces left:\n{left}");
        assert!(!std::env::temp_dir().join(format!("iptproxy-bench-{pid}")).exists());
    }
}
