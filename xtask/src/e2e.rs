//! `cargo xtask e2e`: the operator's first hour, on a real systemd.
//!
//! A Debian root made with debootstrap (cached under `target/e2e/`) is booted with
//! `systemd-nspawn -b --private-network`, so the container has its own kernel network
//! namespace and no rule it writes can reach the host. The container's root is mounted
//! with `--volatile=overlay`: every run starts from the same clean system and the cache is
//! never written. The test installs the .deb there and drives it with `systemctl`, through
//! `nsenter` into the container's init, as an operator would.
//!
//! With `--without-daemon` the steps that need a working `iptproxyd` are not run, and are
//! named as not run; everything else (the package, the CLI, the unit's sandbox) still is.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::sh::{self, cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Install this .deb instead of building one with `cargo xtask deb`.
    #[arg(long)]
    deb: Option<PathBuf>,
    /// The Debian suite the container runs.
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// The Debian mirror debootstrap fetches from.
    #[arg(long, env = "IPTPROXY_E2E_MIRROR", default_value = "http://deb.debian.org/debian")]
    mirror: String,
    /// Run only what needs no daemon (package, CLI, the unit's sandbox); name the rest as not run.
    #[arg(long)]
    without_daemon: bool,
}

/// What the container's root has besides the minimal base: systemd as init, the package's
/// dependencies (iptables, procps), since the container has no network to fetch them, and
/// man-db so that the man pages and the unit's Documentation= can be checked.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,iptables,procps,iproute2,man-db";

/// The example an operator starts from, as the package installs it.
const EXAMPLE: &str = "/usr/share/doc/iptproxy/examples/web.toml";

pub fn run(options: &Options) -> Result<()> {
    ensure!(is_root(), "the end-to-end test needs root (debootstrap, systemd-nspawn, nsenter)");
    for tool in ["debootstrap", "systemd-nspawn", "nsenter"] {
        ensure!(sh::have(tool), "{tool} is missing: `apt-get install debootstrap systemd-container util-linux`");
    }
    let started = Instant::now();
    let deb = match &options.deb {
        Some(deb) => deb.clone(),
        None => timed("build the .deb", crate::package::deb)?,
    };
    let deb = fs::canonicalize(&deb).with_context(|| format!("{}", deb.display()))?;
    let root = timed("the Debian root (debootstrap, cached)", || rootfs(&options.suite, &options.mirror))?;
    let host_before = host_rules()?;

    let c = timed("boot the container", || Container::boot(&root, &deb))?;
    let mut not_run = Vec::new();
    let result = steps(&c, options.without_daemon, &mut not_run);
    if result.is_err() {
        // What an operator would look at first.
        for script in ["systemctl status --no-pager iptproxyd", "journalctl --no-pager -u iptproxyd -n 60"] {
            eprintln!("--- {script}\n{}", String::from_utf8_lossy(&c.run(script).stdout));
        }
    }
    drop(c);
    result?;
    step("the host's own rules are untouched", || {
        let after = host_rules()?;
        ensure!(after == host_before, "the host's rules changed:\n--- before\n{host_before}\n--- after\n{after}");
        ensure!(!after.contains("IPTPROXY"), "iptproxy rules on the host:\n{after}");
        Ok(())
    })?;
    for name in &not_run {
        println!("NOT RUN (needs the daemon): {name}");
    }
    println!("end-to-end: {} steps not run, took {:.0?}", not_run.len(), started.elapsed());
    Ok(())
}

fn is_root() -> bool {
    sh::read(&mut cmd("id", ["-u"])).is_ok_and(|id| id.trim() == "0")
}

/// The steps, in the order an operator takes them.
fn steps(c: &Container, without_daemon: bool, not_run: &mut Vec<&'static str>) -> Result<()> {
    let deb = format!("/mnt/iptproxy/{}", c.deb_name);
    step("installing the package enables, starts and applies nothing", || {
        c.sh(&format!("dpkg -i {deb}"))?;
        expect_eq(c.sh("systemctl is-enabled iptproxyd || true")?.trim(), "disabled", "is-enabled")?;
        expect_eq(c.sh("systemctl is-active iptproxyd || true")?.trim(), "inactive", "is-active")?;
        ensure!(!c.all_rules()?.contains("IPTPROXY"), "rules were applied on install:\n{}", c.all_rules()?);
        expect_eq(c.sh("ls -A /etc/iptproxy")?.trim(), "", "/etc/iptproxy is empty")?;
        Ok(())
    })?;
    step("the package ships examples, man pages and completions", || {
        let examples = c.sh("ls /usr/share/doc/iptproxy/examples/")?;
        for f in ["web.toml", "dns.toml", "node-port.toml", "dual-stack.toml", "weights-affinity.toml"] {
            ensure!(examples.lines().any(|l| l == f), "no example {f}: {examples}");
        }
        c.sh("iptproxy -c /usr/share/doc/iptproxy/examples check")?;
        c.sh("man -w iptproxy iptproxyd iptproxy.toml iptproxy-plan")?;
        let page = c.sh("MANWIDTH=200 man -P cat iptproxy.toml 2>/dev/null")?;
        ensure!(page.contains("masquerade_bit") && page.contains("default: 14"), "iptproxy.toml(5):\n{page}");
        c.sh("test -s /usr/share/bash-completion/completions/iptproxy && \
             test -s /usr/share/zsh/vendor-completions/_iptproxy && \
             test -s /usr/share/fish/vendor_completions.d/iptproxy.fish")?;
        Ok(())
    })?;
    step("systemd-analyze verifies the unit and rates its exposure at most 2.0", || {
        let out = c.run("systemd-analyze verify iptproxyd.service");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
        let score = c.sh("systemd-analyze security --no-pager iptproxyd.service | tail -1")?;
        println!("    {}", score.trim());
        c.sh("systemd-analyze security --threshold=20 iptproxyd.service >/dev/null")?;
        Ok(())
    })?;
    step("the unit's sandbox lets iptables work, on nf_tables and on legacy", || {
        let unit = c.sh("cat /lib/systemd/system/iptproxyd.service")?;
        c.sh(&format!("mkdir /etc/iptproxy-probe && cp {EXAMPLE} /etc/iptproxy-probe/"))?;
        for backend in ["nft", "legacy"] {
            let probe = probe_unit(&unit, &format!("/usr/bin/iptproxy -c /etc/iptproxy-probe --backend {backend}"));
            c.write("/etc/systemd/system/iptproxy-probe.service", &probe)?;
            c.sh("systemctl daemon-reload && systemctl start iptproxy-probe.service")?;
            let rules = c.sh(&format!("iptables-{backend}-save -t nat"))?;
            ensure!(rules.contains("-A IPTPROXY-SERVICES -d 198.18.0.10/32"), "{backend}: not applied:\n{rules}");
            c.sh(&format!("iptproxy -c /etc/iptproxy-probe --backend {backend} plan --detailed-exitcode"))?;
            c.write("/etc/systemd/system/iptproxy-probe.service", &probe.replace(" apply\n", " cleanup\n"))?;
            c.sh("systemctl daemon-reload && systemctl start iptproxy-probe.service")?;
            let rules = c.sh(&format!("iptables-{backend}-save"))?;
            ensure!(!rules.contains("IPTPROXY"), "{backend}: cleanup under the sandbox left rules:\n{rules}");
        }
        c.sh("rm -r /etc/iptproxy-probe /etc/systemd/system/iptproxy-probe.service && systemctl daemon-reload")?;
        Ok(())
    })?;
    step("the example copied to /etc/iptproxy is what `iptproxy plan` will apply", || {
        c.sh(&format!("cp {EXAMPLE} /etc/iptproxy/"))?;
        // Resync only once a day, so that only the service's own triggers (an edit, a
        // reload) can change the rules during the test.
        c.sh(r#"sed -i 's/^\[settings\]$/[settings]\nresync_interval = "1d"/' /etc/iptproxy/web.toml"#)?;
        let check = c.sh("iptproxy check")?;
        ensure!(check.starts_with("Configuration OK: 1 service "), "{check}");
        let plan = c.run("iptproxy plan --detailed-exitcode");
        let text = String::from_utf8_lossy(&plan.stdout);
        expect_eq(&plan.status.code(), &Some(2), "plan --detailed-exitcode before the first apply")?;
        ensure!(text.contains("IPTPROXY-SERVICES") && text.contains("198.18.0.10"), "{text}");
        Ok(())
    })?;

    if without_daemon {
        not_run.extend([
            "systemctl enable --now starts the service, which reports ready with a useful status",
            "the rules are in the container's kernel",
            "an edit of a file is applied by the running service",
            "systemctl reload re-reads the files and repairs the rules",
            "systemctl stop exits cleanly and leaves the rules",
            "an upgrade restarts the service when it was running",
        ]);
        step("`iptproxy apply` by hand puts the rules in the container's kernel", || {
            c.sh("iptproxy apply")?;
            c.sh("iptproxy plan --detailed-exitcode")?;
            Ok(())
        })?;
    } else {
        daemon_steps(c)?;
    }

    step("an upgrade of a stopped service leaves it stopped", || {
        c.sh("systemctl stop iptproxyd")?;
        c.sh(&format!("dpkg -i {deb}"))?;
        expect_eq(c.sh("systemctl is-active iptproxyd || true")?.trim(), "inactive", "is-active after upgrade")?;
        Ok(())
    })?;
    step("removing the package stops the service and leaves the rules and the config", || {
        if !without_daemon {
            c.sh("systemctl start iptproxyd")?;
        }
        c.sh("dpkg -r iptproxy")?;
        expect_eq(c.sh("systemctl is-active iptproxyd || true")?.trim(), "inactive", "is-active after removal")?;
        ensure!(c.all_rules()?.contains("-A IPTPROXY-SERVICES -d 198.18.0.10/32"), "the rules went with the package");
        c.sh("dpkg --purge iptproxy && test -f /etc/iptproxy/web.toml")?;
        Ok(())
    })?;
    Ok(())
}

fn daemon_steps(c: &Container) -> Result<()> {
    step("systemctl enable --now starts the service, which reports ready with a useful status", || {
        // Type=notify: this returns once the daemon said READY=1, after its first apply.
        c.sh("systemctl enable --now iptproxyd")?;
        expect_eq(c.sh("systemctl is-active iptproxyd")?.trim(), "active", "is-active")?;
        expect_eq(c.sh("systemctl is-enabled iptproxyd")?.trim(), "enabled", "is-enabled")?;
        let status = c.sh("systemctl show -P StatusText iptproxyd")?;
        println!("    StatusText: {}", status.trim());
        ensure!(status.to_lowercase().contains("service"), "the status says nothing of the services: {status:?}");
        Ok(())
    })?;
    step("the rules are in the container's kernel", || {
        let rules = c.sh("iptables-save -t nat")?;
        ensure!(rules.contains("-A IPTPROXY-SERVICES -d 198.18.0.10/32 -p tcp"), "{rules}");
        let endpoints = rules.lines().filter(|l| l.contains("-j DNAT --to-destination 198.19.0.")).count();
        expect_eq(&endpoints, &3, "DNAT rules")?;
        // The strongest check: the live rules are exactly what the config says.
        c.sh("iptproxy plan --detailed-exitcode")?;
        Ok(())
    })?;
    step("iptproxy status shows the running service and its endpoints", || {
        let status = c.sh("iptproxy status")?;
        ensure!(status.contains("shop/web"), "the status names no service:\n{status}");
        ensure!(status.contains("198.19.0.4:8080"), "the status names no endpoint:\n{status}");
        Ok(())
    })?;
    step("an edit of a file is applied by the running service", || {
        let web = c.sh("cat /etc/iptproxy/web.toml")?;
        let edited = web.replace("\"198.19.0.4:8080\",\n", "\"198.19.0.4:8080\",\n    \"198.19.0.5:8080\",\n");
        ensure!(edited != web, "the edit must change the file:\n{web}");
        let start = Instant::now();
        c.write("/etc/iptproxy/web.toml", &edited)?;
        c.poll("the fourth endpoint's DNAT rule", Duration::from_secs(60), || {
            let applied = c.sh("iptables-save -t nat")?.contains("--to-destination 198.19.0.5:8080");
            Ok((applied && c.run("iptproxy plan --detailed-exitcode").status.success()).then_some(()))
        })?;
        println!("    applied {:.1?} after the edit", start.elapsed());
        Ok(())
    })?;
    step("systemctl reload re-reads the files and repairs the rules", || {
        let pid = c.sh("systemctl show -P MainPID iptproxyd")?;
        // Damage the rules by hand: no file changes, and the canary chains stay, so only a
        // reload (resync_interval is a day) can bring the rule back.
        c.sh("iptables -w -t nat -S IPTPROXY-SERVICES | grep -- '-d 198.18.0.10/32' | sed 's/^-A/-D/' \
             | while read -r rule; do eval iptables -w -t nat \"$rule\"; done")?;
        expect_eq(&c.run("iptproxy plan --detailed-exitcode").status.code(), &Some(2), "plan after the damage")?;
        let start = Instant::now();
        c.sh("systemctl reload iptproxyd")?;
        c.poll("the repaired rules", Duration::from_secs(60), || {
            Ok(c.run("iptproxy plan --detailed-exitcode").status.success().then_some(()))
        })?;
        println!("    repaired {:.1?} after the reload", start.elapsed());
        expect_eq(&c.sh("systemctl show -P MainPID iptproxyd")?, &pid, "MainPID (a reload is not a restart)")?;
        expect_eq(c.sh("systemctl is-active iptproxyd")?.trim(), "active", "is-active")?;
        Ok(())
    })?;
    step("systemctl stop exits cleanly and leaves the rules", || {
        c.sh("systemctl stop iptproxyd")?;
        expect_eq(c.sh("systemctl is-active iptproxyd || true")?.trim(), "inactive", "is-active (not failed)")?;
        expect_eq(c.sh("systemctl show -P ExecMainStatus iptproxyd")?.trim(), "0", "exit status")?;
        c.sh("iptproxy plan --detailed-exitcode")?;
        Ok(())
    })?;
    step("an upgrade restarts the service when it was running", || {
        c.sh("systemctl start iptproxyd")?;
        let before = c.sh("systemctl show -P MainPID iptproxyd")?;
        c.sh(&format!("dpkg -i /mnt/iptproxy/{}", c.deb_name))?;
        expect_eq(c.sh("systemctl is-active iptproxyd")?.trim(), "active", "is-active after upgrade")?;
        let after = c.sh("systemctl show -P MainPID iptproxyd")?;
        ensure!(after != before, "not restarted: MainPID {} before and after", before.trim());
        Ok(())
    })
}

/// The installed unit turned into a one-shot that runs `iptproxy ... apply` under exactly
/// the same sandbox: every line kept but those that make it a long-running daemon.
fn probe_unit(unit: &str, iptproxy: &str) -> String {
    let daemon_only =
        ["Type=", "NotifyAccess=", "ExecStart=", "ExecReload=", "Restart=", "RestartSec=", "WatchdogSec="];
    let mut out = String::new();
    for line in unit.lines() {
        if line == "[Install]" {
            break;
        }
        if daemon_only.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line == "[Service]" {
            out.push_str(&format!("Type=oneshot\nExecStart={iptproxy} apply\n"));
        }
    }
    out
}

/// A Debian root with systemd, made once by debootstrap and then reused.
fn rootfs(suite: &str, mirror: &str) -> Result<PathBuf> {
    let dir = crate::target().join("e2e");
    let root = dir.join(format!("{suite}-root"));
    let stamp = dir.join(format!("{suite}-root.packages"));
    if root.join("sbin/init").exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == PACKAGES) {
        return Ok(root);
    }
    let partial = dir.join(format!("{suite}-root.partial"));
    for old in [&root, &partial] {
        if old.exists() {
            fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    fs::create_dir_all(&dir)?;
    let include = format!("--include={PACKAGES}");
    let partial_arg = partial.display().to_string();
    sh::run(&mut cmd("debootstrap", ["--variant=minbase", &include, suite, &partial_arg, mirror]))?;
    fs::rename(&partial, &root)?;
    fs::write(&stamp, PACKAGES)?;
    Ok(root)
}

/// A booted container; powered off and waited for when dropped, also on failure.
struct Container {
    nspawn: Child,
    /// The container's init (PID 1 inside), which `nsenter` joins.
    leader: u32,
    deb_name: String,
}

impl Container {
    fn boot(root: &Path, deb: &Path) -> Result<Container> {
        let machine = format!("iptp-e2e-{}", std::process::id());
        let deb_dir = deb.parent().context("the .deb has no directory")?;
        let deb_name = deb.file_name().context("the .deb has no name")?.to_string_lossy().into_owned();
        let log_path = crate::target().join("e2e").join(format!("{machine}.console.log"));
        let log = fs::File::create(&log_path)?;
        let nspawn = Command::new("systemd-nspawn")
            .args(["--boot", "--private-network", "--register=no", "--keep-unit", "--volatile=overlay"])
            .arg("--console=read-only")
            .arg(format!("--machine={machine}"))
            .arg(format!("--directory={}", root.display()))
            .arg(format!("--bind-ro={}:/mnt/iptproxy", deb_dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting systemd-nspawn")?;
        let mut c = Container { nspawn, leader: 0, deb_name };
        println!("    console: {}", log_path.display());
        let nspawn_pid = c.nspawn.id();
        c.poll("the container's init", Duration::from_secs(60), || {
            let children = fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"));
            for pid in children.unwrap_or_default().split_whitespace() {
                if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "systemd") {
                    return Ok(pid.parse().ok());
                }
            }
            Ok(None)
        })
        .map(|leader| c.leader = leader)?;
        // `is-system-running --wait` returns once boot is over: "running", or "degraded" with
        // a failed unit, which is shown but is not ours to fail on. Until the container's
        // systemd listens, it fails at once with nothing on stdout: ask again.
        let state = c.poll("the container's boot", Duration::from_secs(180), || {
            let out = c.run("systemctl is-system-running --wait");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(match state.as_str() {
                "" | "offline" | "initializing" | "starting" => None,
                _ => Some(state),
            })
        })?;
        if state != "running" {
            println!("    system state {state}: {}", String::from_utf8_lossy(&c.run("systemctl --failed").stdout));
        }
        ensure!(state == "running" || state == "degraded", "the container did not boot: {state}");
        Ok(c)
    }

    /// Runs a shell script inside the container, with a clean environment.
    fn run(&self, script: &str) -> Output {
        let leader = self.leader.to_string();
        let mut c = cmd("nsenter", ["-t", &leader, "-a", "env", "-i"]);
        c.args(["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "/bin/sh", "-c", script]);
        match sh::output(&mut c) {
            Ok(out) => out,
            Err(e) => Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: e.to_string().into_bytes(),
            },
        }
    }

    /// Runs a script that must succeed; returns its stdout.
    fn sh(&self, script: &str) -> Result<String> {
        let out = self.run(script);
        if !out.status.success() {
            bail!(
                "in the container, `{script}` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a file inside the container atomically (as an editor would), making its directory.
    fn write(&self, path: &str, text: &str) -> Result<()> {
        let leader = self.leader.to_string();
        let script = format!("mkdir -p \"$(dirname {path})\" && cat > {path}.tmp && mv {path}.tmp {path}");
        let mut child = cmd("nsenter", ["-t", &leader, "-a", "/bin/sh", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .context("nsenter")?;
        use std::io::Write;
        child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
        ensure!(child.wait()?.success(), "writing {path} in the container failed");
        Ok(())
    }

    /// Every table of both families and both backends.
    fn all_rules(&self) -> Result<String> {
        self.sh("for t in iptables ip6tables; do for b in nft legacy; do $t-$b-save; done; done")
    }

    /// Polls `check` until it yields a value or `deadline` passes (no timed assertions:
    /// the deadline is generous and only bounds a hang).
    fn poll<T>(&self, what: &str, deadline: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = check()? {
                return Ok(v);
            }
            if start.elapsed() > deadline {
                bail!("gave up waiting for {what} after {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.leader != 0 {
            let _ = self.run("systemctl poweroff");
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Killing the init ends the container's PID namespace, and with it nspawn.
        if self.leader != 0 {
            let _ = Command::new("kill").args(["-KILL", &self.leader.to_string()]).status();
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The host's own rules, both families and backends, without timestamps.
fn host_rules() -> Result<String> {
    let mut all = String::new();
    for tool in ["iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"] {
        let out = sh::read(&mut cmd(tool, Vec::<&str>::new()))?;
        all.extend(out.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")));
    }
    Ok(all)
}

fn expect_eq<T: PartialEq + std::fmt::Debug + ?Sized>(got: &T, want: &T, what: &str) -> Result<()> {
    ensure!(got == want, "{what}: got {got:?}, want {want:?}");
    Ok(())
}

/// Runs one named step, printing its outcome and how long it took.
fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let start = Instant::now();
    let result = f();
    let took = start.elapsed();
    match &result {
        Ok(()) => println!("ok   {name} ({took:.1?})"),
        Err(_) => println!("FAIL {name} ({took:.1?})"),
    }
    result.with_context(|| format!("step failed: {name}"))
}

fn timed<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let v = f()?;
    println!("ok   {name} ({:.1?})", start.elapsed());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_unit_keeps_the_sandbox_and_runs_apply_once() {
        let unit = "[Unit]\nDescription=x\n\n[Service]\nType=notify\nExecStart=/usr/bin/iptproxyd\n\
                    ExecReload=/bin/kill -HUP $MAINPID\nWatchdogSec=60s\nProtectSystem=strict\n\
                    SystemCallFilter=@system-service\n\n[Install]\nWantedBy=multi-user.target\n";
        assert_eq!(
            probe_unit(unit, "/usr/bin/iptproxy --backend nft"),
            "[Unit]\nDescription=x\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/iptproxy --backend nft apply\n\
             ProtectSystem=strict\nSystemCallFilter=@system-service\n\n"
        );
    }
}
