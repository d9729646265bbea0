//! A real `iptproxyd` running inside a bench's namespace, with a real `NOTIFY_SOCKET`
//! datagram socket that the test reads, as systemd would. Killed when dropped, so a failing
//! test leaves no daemon behind.
//!
//! Waits are for events (a notification, a log line, a condition), with a generous
//! deadline that only a broken daemon reaches; no test asserts on elapsed time.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{Bench, bin};

/// Long enough for a loaded machine; reached only when the daemon is broken.
const DEADLINE: Duration = Duration::from_secs(60);

pub struct Running {
    child: Child,
    notify: UnixDatagram,
    /// Every notification received, in order.
    notes: Vec<String>,
    /// How many of `notes` the waits have consumed.
    seen: usize,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

impl Running {
    /// Starts `iptproxyd` on the bench's config and backend, with extra environment.
    pub fn start(b: &Bench, env: &[(&str, &str)]) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&socket).expect("bind the notify socket");
        notify.set_nonblocking(true).unwrap();
        let mut cmd = b.ns.command(bin("iptproxyd"));
        cmd.arg("-c").arg(b.dir.path()).args(["--backend", b.backend]);
        cmd.arg("--state-file").arg(dir.path().join("state.json"));
        cmd.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM").env_remove("WATCHDOG_USEC");
        cmd.env("NOTIFY_SOCKET", &socket);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running { child, notify, notes: Vec::new(), seen: 0, log, dir, exited: None }
    }

    /// Starts it and waits for `READY=1`.
    pub fn ready(b: &Bench) -> Running {
        let mut d = Running::start(b, &[]);
        d.wait_note("READY=1", |n| has_line(n, "READY=1"));
        d
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    /// The daemon's state file, as JSON (`null` until it is written).
    pub fn state(&self) -> serde_json::Value {
        std::fs::read(self.state_file()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// All notifications so far, in order.
    pub fn notes(&mut self) -> &[String] {
        self.drain();
        &self.notes
    }

    fn drain(&mut self) {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Waits for the next notification (after those already waited for) that matches,
    /// and returns it.
    #[track_caller]
    pub fn wait_note(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(i) = (self.seen..self.notes.len()).find(|&i| matches(&self.notes[i])) {
                self.seen = i + 1;
                return self.notes[i].clone();
            }
            self.fail_if_over(start, what);
            std::thread::sleep(Duration::from_millis(20));
            self.drain();
        }
    }

    /// Waits until `condition` holds, checking every 50 ms.
    #[track_caller]
    pub fn wait_until(&mut self, what: &str, mut condition: impl FnMut(&Running) -> bool) {
        let start = Instant::now();
        while !condition(self) {
            self.fail_if_over(start, what);
            std::thread::sleep(Duration::from_millis(50));
            self.drain();
        }
    }

    /// Waits until at least `n` log lines contain `needle`.
    #[track_caller]
    pub fn wait_log(&mut self, needle: &str, n: usize) {
        self.wait_until(&format!("{n} log lines with {needle:?}"), |d| d.count(needle) >= n);
    }

    #[track_caller]
    fn fail_if_over(&mut self, start: Instant, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exited = Some(status);
            self.drain();
            panic!("iptproxyd exited ({status}) while waiting for {what}\n{}", self.dump());
        }
        if start.elapsed() > DEADLINE {
            self.drain();
            panic!("gave up waiting for {what}\n{}", self.dump());
        }
    }

    fn dump(&self) -> String {
        format!("--- notifications\n{}\n--- log\n{}", self.notes.join("\n--\n"), self.log())
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the daemon");
    }

    /// Waits for the daemon to exit and returns how.
    #[track_caller]
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.drain();
                self.exited = Some(status);
                return status;
            }
            if start.elapsed() > DEADLINE {
                self.drain();
                panic!("iptproxyd did not exit\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a notification holds this exact line.
pub fn has_line(note: &str, line: &str) -> bool {
    note.lines().any(|l| l == line)
}

/// The `STATUS=` of a notification, if it has one.
pub fn status(note: &str) -> Option<&str> {
    note.lines().find_map(|l| l.strip_prefix("STATUS="))
}
