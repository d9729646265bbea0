//! Running a program to measure it: wall time, exit status, output, and its own peak RSS
//! (`VmHWM`, read from /proc while it runs, so iptables children are not counted).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub struct Measured {
    pub wall: Duration,
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set size in KiB, as last seen before the process exited.
    pub peak_kib: Option<u64>,
}

pub fn measure(cmd: &mut Command) -> Result<Measured> {
    let start = Instant::now();
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("spawning")?;
    let pid = child.id();
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let mut peak_kib = None;
    let status = loop {
        if let Some(kib) = vm_hwm(pid) {
            peak_kib = Some(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = start.elapsed();
    Ok(Measured {
        wall,
        success: status.success(),
        status: status.to_string(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        peak_kib,
    })
}

/// `VmHWM` of a live process, in KiB.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
