//! The test bench: a network namespace of our own, a config directory, and the real
//! `iptproxy` binary run inside the namespace against the real iptables.
//!
//! Kernel tests need root and `ip netns`. Without them they fail, loudly: a kernel test
//! that silently skips would count as a pass and prove nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Both iptables backends; kernel tests run on each.
pub const BACKENDS: [&str; 2] = ["nft", "legacy"];

/// A network namespace that exists for the life of this value and is deleted when it is
/// dropped, also when the test panics.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("iptp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "kernel tests need root and `ip netns` (iproute2): `ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("kernel tests need `ip` (iproute2): {e}"),
        }
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a shell script inside the namespace; panics if it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.command("sh").args(["-ec", script]).output().expect("run sh");
        assert!(out.status.success(), "in {}: `{script}` failed:\n{}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables-save` (`ip6tables-save` with `v6`) of one backend, with `# ...` lines
    /// (which carry a timestamp) removed: what to compare byte for byte.
    pub fn save(&self, backend: &str, v6: bool) -> String {
        let tool = if v6 { "ip6tables" } else { "iptables" };
        let out = self.command(format!("{tool}-{backend}-save")).output().expect("run iptables-save");
        assert!(out.status.success(), "{tool}-{backend}-save: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
    }

    /// Both families' rules, with counters: what must stay identical when nothing changes.
    pub fn save_all(&self, backend: &str) -> String {
        let mut all = String::new();
        for tool in ["iptables", "ip6tables"] {
            let out = self.command(format!("{tool}-{backend}-save")).arg("-c").output().expect("run iptables-save");
            let text = String::from_utf8_lossy(&out.stdout);
            all.extend(text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")));
        }
        all
    }

    /// Loads rules with `iptables-restore --noflush --counters` (`[p:b]` prefixes are optional).
    pub fn restore(&self, backend: &str, v6: bool, rules: &str) {
        let tool = if v6 { "ip6tables" } else { "iptables" };
        let mut child = self
            .command(format!("{tool}-{backend}-restore"))
            .args(["--noflush", "--counters", "--wait"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run iptables-restore");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{tool}-{backend}-restore: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Netns {
    /// Runs `f` on a thread that has entered this namespace, so that the iptables it runs
    /// (through the library's runners) act there. The thread ends with `f`: nothing else
    /// ever runs in the namespace by mistake.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open the namespace");
        std::thread::scope(|s| {
            let inside = s.spawn(move || {
                use std::os::fd::AsFd;
                rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                    .expect("setns into the test namespace");
                f()
            });
            inside.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The outcome of one run of a binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing the output when it is not the one expected.
    #[track_caller]
    pub fn code(self, expected: i32) -> Run {
        assert_eq!(self.code, expected, "exit code\n--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        self.code(0)
    }
}

/// A config directory and a namespace: where one test's iptproxy lives.
pub struct Bench {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub backend: &'static str,
}

impl Bench {
    pub fn new(backend: &'static str) -> Bench {
        Bench { ns: Netns::new(), dir: tempfile::tempdir().expect("tempdir"), backend }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a config file (replacing it atomically, as an editor would).
    pub fn file(&self, name: &str, contents: &str) -> &Bench {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write config");
        std::fs::rename(&tmp, self.path(name)).expect("rename config");
        self
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path(name)).expect("remove config");
    }

    /// Runs `iptproxy ARGS` inside the namespace with this bench's config and backend.
    pub fn iptproxy(&self, args: &[&str]) -> Run {
        self.iptproxy_env(args, &[])
    }

    pub fn iptproxy_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.ns.command(bin("iptproxy"));
        cmd.arg("-c").arg(self.dir.path()).args(["--backend", self.backend]).args(args);
        cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().expect("run iptproxy"))
    }

    pub fn save(&self, v6: bool) -> String {
        self.ns.save(self.backend, v6)
    }

    pub fn save_all(&self) -> String {
        self.ns.save_all(self.backend)
    }
}

/// The path of one of the package's binaries, built by cargo for the tests.
pub fn bin(name: &str) -> &'static Path {
    match name {
        "iptproxy" => Path::new(env!("CARGO_BIN_EXE_iptproxy")),
        "iptproxyd" => Path::new(env!("CARGO_BIN_EXE_iptproxyd")),
        other => panic!("no binary {other}"),
    }
}

/// Runs a binary outside any namespace (for commands that touch no iptables).
pub fn run_plain(name: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin(name));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("run binary"))
}

/// The lines of `save` output that are not iptproxy's: not in our chains, not jumping to
/// them, not declaring them.
pub fn foreign_lines(save: &str) -> Vec<String> {
    save.lines().filter(|l| !l.contains("IPTPROXY-")).map(str::to_string).collect()
}
