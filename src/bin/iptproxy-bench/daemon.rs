//! The rows that need the running daemon: a one-endpoint edit from the file's rename to the
//! rule in the kernel, a no-op resync, and the daemon's peak memory.
//!
//! `iptproxyd` speaks systemd's notify protocol: the benchmark binds a datagram socket,
//! passes it as `NOTIFY_SOCKET`, waits for `READY=1` after the first sync, and after a
//! `SIGHUP` (a full resync) for the `READY=1` that follows `RELOADING=1`. The edit is seen
//! in the kernel by polling the edited chain.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::run::vm_hwm;
use crate::workload::{DAEMON_ENDPOINT, Workload};
use crate::{Cell, Row, row};

/// The running daemon's pid, for [`stop`] when a signal ends the benchmark.
static PID: AtomicU32 = AtomicU32::new(0);

/// Stops the daemon, if one runs, and removes the notify socket.
pub fn stop() {
    let pid = PID.swap(0, Ordering::SeqCst);
    if pid != 0 {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    let _ = std::fs::remove_file(notify_path());
}

fn notify_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("iptproxy-bench-notify-{}", std::process::id()))
}

/// How long the daemon may take to start (its first sync reads the whole ruleset).
const START: Duration = Duration::from_secs(3600);
const EDIT: Duration = Duration::from_secs(600);

pub fn rows(ns: &Netns, bin_dir: &Path, work: &Workload, edit: (usize, String), bare_edit: Duration) -> Vec<Row> {
    match measure(ns, bin_dir, work, edit, bare_edit) {
        Ok(rows) => rows,
        Err(e) => vec![row("daemon rows (edit, no-op resync, peak RSS)", Cell::Text(format!("not measured: {e:#}")))],
    }
}

struct Daemon {
    child: Child,
    socket: UnixDatagram,
    path: std::path::PathBuf,
    state: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        PID.store(0, Ordering::SeqCst);
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.state);
    }
}

impl Daemon {
    /// Waits for a notify message containing `what`; fails when the daemon exits first.
    fn wait_for(&mut self, what: &str, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut buf = vec![0u8; 4096];
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("iptproxyd exited ({status}): {}", err.lines().last().unwrap_or("").trim());
            }
            match self.socket.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == what) => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
        bail!("no {what} from iptproxyd within {} s", limit.as_secs())
    }
}

fn measure(
    ns: &Netns,
    bin_dir: &Path,
    work: &Workload,
    edit: (usize, String),
    bare_edit: Duration,
) -> Result<Vec<Row>> {
    let program = bin_dir.join("iptproxyd");
    if !program.exists() {
        bail!("{} not found", program.display());
    }
    let path = notify_path();
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).context("binding the notify socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let child = ns
        .command(&program.to_string_lossy())
        .arg("-c")
        .arg(work.dir())
        .arg("--state-file")
        .arg(work.dir().with_extension("state.json"))
        .args(["--backend", &ns.backend])
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iptproxyd")?;
    PID.store(child.id(), Ordering::SeqCst);
    let mut d = Daemon { child, socket, path, state: work.dir().with_extension("state.json") };
    let t = Instant::now();
    d.wait_for("READY=1", START)?;
    let started = t.elapsed();
    let pid = d.child.id();
    let mut rows = vec![row("iptproxyd start (full resync: save, plan; nothing to change)", Cell::Time(started))];

    // The edit: from the rename to the daemon's commit.
    let (service, svc_chain) = edit;
    // The daemon rewrites its state file once an apply is done: polled here (reading a
    // small file costs nothing), then the chain is checked. Polling the chain itself costs
    // ~0.5 s a poll on legacy (it reads the whole table); `nft monitor` reads the whole
    // ruleset before it listens, and at 1,000 services never got there.
    let state = &d.state;
    let read = || std::fs::read(state).unwrap_or_default();
    let mut seen = read();
    let t = Instant::now();
    work.add_endpoint(service, DAEMON_ENDPOINT)?;
    let took = loop {
        let now = read();
        if now != seen {
            let at = t.elapsed();
            if ns.chain_has("nat", &svc_chain, DAEMON_ENDPOINT) {
                break at;
            }
            seen = now;
        }
        if t.elapsed() > EDIT {
            bail!("the edit did not reach the kernel within {} s", EDIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let how = "until the state file says applied and the rule is in the chain";
    let mut r =
        row(&format!("one-endpoint edit through iptproxyd (rename to rule in kernel; {how})"), Cell::Time(took));
    r.reference = Some((Cell::Time(bare_edit), "the same lines restored bare".into()));
    rows.push(r);

    // A full resync that finds nothing to change.
    let t = Instant::now();
    Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
    d.wait_for("RELOADING=1", EDIT)?;
    d.wait_for("READY=1", START)?;
    rows.push(row("iptproxyd no-op resync (SIGHUP: save, plan, nothing to change)", Cell::Time(t.elapsed())));
    rows.push(row("iptproxyd peak RSS", vm_hwm(pid).map_or(Cell::Text("?".into()), |k| Cell::Mib(k as f64 / 1024.0))));
    Ok(rows)
}
