//! Running commands: each one echoed, its failure an error naming it.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// A command from a program and its arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `c` with its output shown; fails unless it exits 0.
pub fn run(c: &mut Command) -> Result<()> {
    let what = describe(c);
    eprintln!("+ {what}");
    let status = c.status().with_context(|| format!("cannot run `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed: {status}");
    }
    Ok(())
}

/// Runs `c` and returns what it printed; fails, showing stderr, unless it exits 0.
pub fn read(c: &mut Command) -> Result<String> {
    let out = output(c)?;
    if !out.status.success() {
        bail!("`{}` failed: {}\n{}", describe(c), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `c` to completion, whatever its exit status.
pub fn output(c: &mut Command) -> Result<Output> {
    c.stdin(Stdio::null()).output().with_context(|| format!("cannot run `{}`", describe(c)))
}

/// Whether a program is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
