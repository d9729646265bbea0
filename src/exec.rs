//! Running iptables: the one seam between iptproxy and the kernel.
//!
//! [`Runner`] is a trait so that tests can put a fault-injecting runner in place of
//! [`System`]; everything else in iptproxy goes through it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use crate::backend::Backend;
use crate::ruleset::Family;

pub mod fault;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{program} not found on PATH: install iptables, or choose another --backend")]
    NotFound { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: String, status: String, stderr: String },
}

/// Restore input produced a line at a time: it hands each line to the sink it is given.
pub type Input<'a> = dyn FnMut(&mut dyn FnMut(&str)) + 'a;

pub trait Runner {
    /// Runs `iptables-save` (`ip6tables-save` for IPv6), with counters when asked,
    /// handing each line of its output to `line` as it arrives.
    fn save(&self, family: Family, counters: bool, line: &mut dyn FnMut(&str)) -> Result<(), ExecError>;

    /// Feeds `input` to `iptables-restore --noflush`.
    fn restore(&self, family: Family, input: &str) -> Result<(), ExecError>;

    /// Feeds `iptables-restore --noflush` the lines `input` hands to its sink, as it hands
    /// them: for a transaction too large to hold. This default collects them and runs
    /// [`restore`](Runner::restore); [`System`] streams them to the tool.
    fn restore_lines(&self, family: Family, input: &mut Input<'_>) -> Result<(), ExecError> {
        let mut text = String::new();
        input(&mut |line| {
            text.push_str(line);
            text.push('\n');
        });
        self.restore(family, &text)
    }

    /// The rules of one chain (each as `iptables-save` prints it after `-A CHAIN `), or
    /// `None` when the chain (or its table) does not exist. This default reads the whole
    /// family; [`System`] asks for the one chain, which costs the same at any ruleset size.
    fn list_chain(&self, family: Family, table: &str, chain: &str) -> Result<Option<Vec<String>>, ExecError> {
        let mut current = String::new();
        let mut found = false;
        let mut rules = Vec::new();
        let rule_prefix = format!("-A {chain} ");
        self.save(family, false, &mut |line| {
            if let Some(t) = line.strip_prefix('*') {
                current = t.to_string();
            } else if current == table {
                found |= line.split(' ').next() == Some(&format!(":{chain}"));
                if let Some(spec) = line.strip_prefix(&rule_prefix) {
                    rules.push(spec.to_string());
                }
            }
        })?;
        Ok(found.then_some(rules))
    }

    /// Deletes the conntrack entries that match `filter` (`conntrack -D` arguments): flows
    /// the last apply left pointing the wrong way (see [`crate::conntrack`]). Having none to
    /// delete is success. This default does nothing, for runners that have no kernel.
    fn forget_flows(&self, _family: Family, _filter: &[String]) -> Result<(), ExecError> {
        Ok(())
    }

    /// A short name for logs: `nft` or `legacy`.
    fn describe(&self) -> String;

    /// How many lines one transaction should hold at most (see [`Backend::max_lines`]).
    fn max_lines(&self) -> usize {
        crate::restore::DEFAULT_MAX_LINES
    }
}

/// The real iptables binaries of one backend, found on PATH.
#[derive(Debug, Clone)]
pub struct System {
    pub backend: Backend,
    /// Seconds to wait for the xtables lock.
    pub lock_wait: u32,
}

impl System {
    pub fn new(backend: Backend, lock_wait: u32) -> System {
        System { backend, lock_wait }
    }
}

impl Runner for System {
    fn save(&self, family: Family, counters: bool, line: &mut dyn FnMut(&str)) -> Result<(), ExecError> {
        let program = self.backend.program(family, "-save");
        let mut cmd = Command::new(&program);
        if counters {
            cmd.arg("--counters");
        }
        let mut child = spawn(&program, cmd.stdout(Stdio::piped()))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or_else(|| no_pipe(&program))?);
        let mut buf = String::new();
        loop {
            buf.clear();
            match stdout.read_line(&mut buf) {
                Ok(0) => break,
                Ok(_) => line(buf.trim_end_matches('\n')),
                // Invalid UTF-8 from the tool: hand it on lossily, the parser will say what is wrong.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let mut bytes = Vec::new();
                    stdout.read_to_end(&mut bytes).ok();
                    for l in String::from_utf8_lossy(&bytes).lines() {
                        line(l);
                    }
                    break;
                }
                Err(e) => return Err(ExecError::Spawn { program, source: e }),
            }
        }
        finish(&program, child)
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), ExecError> {
        let program = self.backend.program(family, "-restore");
        let mut cmd = Command::new(&program);
        cmd.arg("--noflush").arg(format!("--wait={}", self.lock_wait));
        let mut child = spawn(&program, cmd.stdin(Stdio::piped()).stdout(Stdio::null()))?;
        let mut stdin = child.stdin.take().ok_or_else(|| no_pipe(&program))?;
        // A write error means the tool exited early; its status and stderr say why.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        finish(&program, child)
    }

    fn restore_lines(&self, family: Family, input: &mut Input<'_>) -> Result<(), ExecError> {
        let program = self.backend.program(family, "-restore");
        let mut cmd = Command::new(&program);
        cmd.arg("--noflush").arg(format!("--wait={}", self.lock_wait));
        let mut child = spawn(&program, cmd.stdin(Stdio::piped()).stdout(Stdio::null()))?;
        let stdin = child.stdin.take().ok_or_else(|| no_pipe(&program))?;
        let mut stdin = std::io::BufWriter::with_capacity(1 << 16, stdin);
        // After a write error (the tool exited early) the rest is skipped; its status and
        // stderr say why.
        let mut broken = false;
        input(&mut |line| {
            broken = broken || stdin.write_all(line.as_bytes()).and_then(|()| stdin.write_all(b"\n")).is_err();
        });
        let _ = stdin.flush();
        drop(stdin);
        finish(&program, child)
    }

    fn list_chain(&self, family: Family, table: &str, chain: &str) -> Result<Option<Vec<String>>, ExecError> {
        let program = self.backend.program(family, "");
        let wait = self.lock_wait.to_string();
        let out = output(&program, &["-w", &wait, "-t", table, "-S", chain])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(0) => {
                let prefix = format!("-A {chain} ");
                Ok(Some(stdout.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()))
            }
            // iptables exits 1 for "no such chain" (legacy: "No chain/target/match by that
            // name"; nft: "... is incompatible"); 2 and up are usage, version, lock problems.
            Some(1) => Ok(None),
            _ => Err(ExecError::Failed {
                program,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
        }
    }

    fn forget_flows(&self, family: Family, filter: &[String]) -> Result<(), ExecError> {
        let f = match family {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        };
        let mut args = vec!["-D", "-f", f];
        args.extend(filter.iter().map(String::as_str));
        let out = output("conntrack", &args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // conntrack exits 1 when no entry matched; that is the usual case, not a failure.
        if out.status.success() || stderr.contains(" 0 flow entries have been deleted") {
            return Ok(());
        }
        Err(ExecError::Failed {
            program: "conntrack".into(),
            status: out.status.to_string(),
            stderr: stderr.trim().into(),
        })
    }

    fn describe(&self) -> String {
        self.backend.to_string()
    }

    fn max_lines(&self) -> usize {
        self.backend.max_lines()
    }
}

fn spawn(program: &str, cmd: &mut Command) -> Result<std::process::Child, ExecError> {
    raise_stack_limit();
    cmd.stderr(Stdio::piped()).spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ExecError::NotFound { program: program.to_string() },
        _ => ExecError::Spawn { program: program.to_string(), source },
    })
}

/// Lets the iptables tools iptproxy runs have all the stack the hard limit allows: with
/// ~110,000 chains (10,000 services x 10 endpoints), iptables-nft-save 1.8.9 overflows the
/// default 8 MiB stack while reading the chain list and dies of SIGSEGV. Children inherit
/// the limit; iptproxy's own threads are unaffected.
pub fn raise_stack_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_STACK) {
            if soft < hard {
                if let Err(e) = setrlimit(Resource::RLIMIT_STACK, hard, hard) {
                    log::debug!("cannot raise the stack limit for iptables: {e}");
                }
            }
        }
    });
}

fn finish(program: &str, mut child: std::process::Child) -> Result<(), ExecError> {
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait().map_err(|source| ExecError::Spawn { program: program.to_string(), source })?;
    if status.success() {
        return Ok(());
    }
    Err(ExecError::Failed {
        program: program.to_string(),
        status: status.to_string(),
        stderr: stderr.trim().to_string(),
    })
}

fn no_pipe(program: &str) -> ExecError {
    ExecError::Spawn { program: program.to_string(), source: std::io::Error::other("no pipe to the child") }
}

/// Runs a command for its exit status and output; for probes like backend detection.
pub fn output(program: &str, args: &[&str]) -> Result<std::process::Output, ExecError> {
    Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ExecError::NotFound { program: program.to_string() },
        _ => ExecError::Spawn { program: program.to_string(), source },
    })
}
