//! `iptproxy-bench`: how iptproxy's costs compare with the kernel's own and with the
//! kube-proxy way, at a given size, measured in throwaway network namespaces.
//!
//! It generates N services x M endpoints, then times, against the real iptables: the first
//! sync, `iptables-save`, `iptproxy plan` (and its own CPU: parse, render, diff), a
//! one-endpoint edit, a no-op resync and peak memory. Every figure sits beside the bare
//! kernel cost of the same change and the cost of doing it the kube-proxy way (a full sync
//! in one transaction; a partial sync that rewrites the services chain and the changed
//! chains), so each is also a ratio. Run it with `--help`; see BENCHMARKS.md.

mod daemon;
mod generate;
mod netns;
mod run;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iptproxy::backend::Backend;
use iptproxy::compare::Comparer;
use iptproxy::edits::TableEdits;
use iptproxy::exec::{ExecError, Runner};
use iptproxy::ruleset::Family;
use iptproxy::{apply, config, edits, incremental, plan, render};

use netns::Netns;
use workload::{NEW_ENDPOINT, Workload};

#[derive(Debug, Parser)]
#[command(name = "iptproxy-bench", about = "Measure iptproxy against the kernel and the kube-proxy way (needs root)")]
struct Args {
    /// How many services.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Services per config file.
    #[arg(long, default_value_t = 100)]
    per_file: usize,
    /// Which iptables to measure.
    #[arg(long, value_parser = ["nft", "legacy"], default_value = "nft")]
    backend: String,
    /// Run the kube-proxy-way first sync (everything in one transaction) only up to this
    /// many services: on nft its cost grows much faster than its size (minutes at 5,000).
    #[arg(long, default_value_t = 2000)]
    kube_full_max: usize,
    /// Run iptables-save, plan and the no-op resync this many times and report the median
    /// (the machine may be shared: one run can be far off).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where the iptproxy and iptproxyd binaries are (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("no directory for this binary")?.to_path_buf(),
    };
    let iptproxy = bin_dir.join("iptproxy");
    if !iptproxy.exists() {
        bail!("{} not found: build it first (cargo build --release --bins)", iptproxy.display());
    }
    // As iptproxy does for the tools it runs: iptables-nft-save overflows a default stack
    // at ~110,000 chains. Every program the benchmark runs inherits this.
    iptproxy::exec::raise_stack_limit();
    // Interrupted, it still deletes its namespaces and files (Drop does not run then).
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            daemon::stop();
            netns::delete_all();
            workload::remove_dir();
            std::process::exit(128 + signal);
        }
    });
    println!("{}", header(&args)?);
    let rows = bench(&args, &bin_dir)?;
    print!("{}", table(&rows));
    println!("\nload average at the end: {}", load());
    Ok(())
}

/// One line of the table. `reference` is the bare kernel (or tool) cost of the same work;
/// `kube` is the same work done the kube-proxy way.
struct Row {
    op: String,
    ours: Cell,
    reference: Option<(Cell, String)>,
    kube: Option<(Cell, String)>,
}

enum Cell {
    Time(Duration),
    Mib(f64),
    Text(String),
}

impl Cell {
    fn show(&self) -> String {
        match self {
            Cell::Time(d) if d.as_secs_f64() < 1.0 => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
            Cell::Time(d) => format!("{:.2} s", d.as_secs_f64()),
            Cell::Mib(m) => format!("{m:.1} MiB"),
            Cell::Text(t) => t.clone(),
        }
    }

    fn secs(&self) -> Option<f64> {
        match self {
            Cell::Time(d) => Some(d.as_secs_f64()),
            _ => None,
        }
    }
}

fn row(op: &str, ours: Cell) -> Row {
    Row { op: op.to_string(), ours, reference: None, kube: None }
}

fn ratio(ours: &Cell, other: &Cell) -> String {
    match (ours.secs(), other.secs()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => String::new(),
    }
}

fn described(c: &Cell, what: &str) -> String {
    if what.is_empty() { c.show() } else { format!("{} ({what})", c.show()) }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| operation | iptproxy | reference (the same work, bare) | ratio | kube-proxy way | ratio |\n|---|---:|---|---:|---|---:|\n",
    );
    for r in rows {
        let (rc, rr) = match &r.reference {
            Some((c, what)) => (described(c, what), ratio(&r.ours, c)),
            None => (String::new(), String::new()),
        };
        let (kc, kr) = match &r.kube {
            Some((c, what)) => (described(c, what), ratio(&r.ours, c)),
            None => (String::new(), String::new()),
        };
        out.push_str(&format!("| {} | {} | {rc} | {rr} | {kc} | {kr} |\n", r.op, r.ours.show()));
    }
    out
}

fn header(args: &Args) -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = std::process::Command::new(format!("iptables-{}", args.backend))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Ok(format!(
        "iptproxy-bench: {} services x {} endpoints ({} per file), iptables-{}\n\
         machine: {cpu}, {cores} cores, Linux {}, {version}; load average at the start: {}\n\
         iptables-save, plan and the no-op resync: the median of {} runs\n",
        args.services,
        args.endpoints,
        args.per_file,
        args.backend,
        kernel.trim(),
        load(),
        args.repeat.max(1)
    ))
}

fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn secs(d: Duration) -> Cell {
    Cell::Time(d)
}

fn failed(what: &str, m: &run::Measured) -> Cell {
    let why = m.stderr.lines().last().unwrap_or("").trim().to_string();
    Cell::Text(format!("{what} failed after {:.1} s ({}: {why})", m.wall.as_secs_f64(), m.status))
}

fn mib(kib: Option<u64>) -> Cell {
    kib.map_or(Cell::Text("?".into()), |k| Cell::Mib(k as f64 / 1024.0))
}

fn bench(args: &Args, bin_dir: &std::path::Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let work = Workload::create(args.services, args.endpoints, args.per_file)?;
    let t = Instant::now();
    let cfg = config::load_dir(work.dir()).map_err(|e| anyhow::anyhow!("generated config is invalid: {e}"))?;
    let loading = t.elapsed();
    let desired = render::render(&cfg);
    let rules: usize = desired.tables.iter().map(|t| t.rule_count()).sum();
    let chains: usize = desired.tables.iter().map(|t| t.chains.len()).sum();
    println!("{} files, {rules} rules in {chains} chains\n", work.files());
    let backend = if args.backend == "legacy" { Backend::Legacy } else { Backend::Nft };
    // The transactions `iptproxy apply` writes on an empty host.
    let scripts = apply::scripts(&compare_text(&cfg, "")?, backend.max_lines())?;

    // iptproxy's own namespace, and one where the same work is done bare.
    let ours = Netns::new(&args.backend)?;
    let bare = Netns::new(&args.backend)?;
    let iptproxy = |extra: &[&str]| {
        let mut cmd = ours.command(&bin_dir.join("iptproxy").to_string_lossy());
        cmd.arg("-c").arg(work.dir()).args(["--backend", &args.backend]).args(extra);
        run::measure(&mut cmd)
    };

    // First sync.
    let applied = iptproxy(&["apply"])?;
    if !applied.success {
        bail!("iptproxy apply failed: {}", applied.stderr);
    }
    let mut kernel = Duration::ZERO;
    for s in &scripts {
        kernel += bare.restore(&s.text)?;
    }
    let lines: usize = scripts.iter().map(|s| s.text.lines().count()).sum();
    let mut r = row("first sync (`iptproxy apply` on an empty host)", secs(applied.wall));
    r.reference = Some((secs(kernel), format!("its {lines} lines restored bare, {} transactions", scripts.len())));
    drop(scripts);
    let full_text = workload::full_rewrite(&desired);
    let full = if args.services <= args.kube_full_max {
        let ns = Netns::new(&args.backend)?;
        let took = ns.restore(&full_text)?;
        Some((secs(took), "everything in one transaction".to_string()))
    } else {
        Some((Cell::Text(format!("not run above {} services (--kube-full-max)", args.kube_full_max)), String::new()))
    };
    drop(full_text);
    r.kube = full.as_ref().map(|(c, w)| (clone_cell(c), w.clone()));
    rows.push(r);
    rows.push(row("  peak RSS of `iptproxy apply`", mib(applied.peak_kib)));

    // Reading the state back.
    let saves: Result<Vec<_>> = (0..args.repeat.max(1)).map(|_| ours.save()).collect();
    let (save_took, saved) = match saves {
        Ok(mut runs) => {
            let took = median(runs.iter().map(|(t, _)| *t).collect());
            (Some(took), runs.pop().map(|(_, text)| text))
        }
        Err(e) => {
            rows.push(row("`iptables-save`", Cell::Text(format!("{e:#}"))));
            (None, None)
        }
    };
    if let Some(t) = save_took {
        rows.push(row("`iptables-save`", secs(t)));
    }

    // Plan with nothing to change, end to end, and its own CPU in process.
    let planned = repeated(args.repeat, || iptproxy(&["plan", "--detailed-exitcode"]))?;
    let mut r =
        row("`iptproxy plan` (no change)", if planned.success { secs(planned.wall) } else { failed("plan", &planned) });
    r.reference = save_took.map(|t| (secs(t), "`iptables-save` alone".to_string()));
    rows.push(r);
    rows.push(row("  peak RSS of `iptproxy plan`", mib(planned.peak_kib)));
    rows.push(row(&format!("  own CPU: load the config ({} files)", work.files()), secs(loading)));
    if let Some(text) = &saved {
        let t = Instant::now();
        let found = compare_text(&cfg, text)?;
        let comparing = t.elapsed();
        let changes = count_chains(&edits::to_plan(&found));
        let what = format!(
            "  own CPU: compare {} lines as they stream (parse, render each chain, diff; {changes} chains to change)",
            text.lines().count()
        );
        rows.push(row(&what, secs(comparing)));
    }
    drop(saved);
    drop(desired);

    // One endpoint added, in process: load, plan from the previous config, restore.
    let before_edit = load();
    let t = Instant::now();
    work.add_endpoint(args.services / 2, NEW_ENDPOINT)?;
    let cfg2 = config::load_dir(work.dir()).map_err(|e| anyhow::anyhow!("edited config is invalid: {e}"))?;
    let edit = incremental::between(&cfg, &cfg2).context("the edit changed the settings")?;
    let runner = NsRunner(&ours, backend);
    apply::edits(&runner, &edit, backend.max_lines())?;
    let in_process = t.elapsed();
    let edit_plan = edits::to_plan(&edit);
    let sep = new_sep_chain(&edit_plan).context("the edit creates no endpoint chain")?;
    if !ours.chain_has("nat", &sep, NEW_ENDPOINT) {
        bail!("the edit's rule is not in the kernel");
    }
    let edit_scripts = apply::scripts(&edit, backend.max_lines())?;
    let edit_lines: usize = edit_scripts.iter().map(|s| s.text.lines().count()).sum();
    let mut bare_edit = Duration::ZERO;
    for s in &edit_scripts {
        bare_edit += bare.restore(&s.text)?;
    }
    let kube_edit = bare.restore(&workload::partial_rewrite(&render::render(&cfg2), &edit_plan))?;
    let mut r = row("one-endpoint edit, in process (load, plan from the previous config, restore)", secs(in_process));
    r.reference = Some((secs(bare_edit), format!("its {edit_lines} lines restored bare")));
    r.kube = Some((secs(kube_edit), "services chain + changed chains rewritten".into()));
    rows.push(r);
    log_load("edit", &before_edit);

    // The running daemon: the edit from the file's rename to the rule in the kernel, a
    // no-op resync, its peak memory.
    let svc = service_chain(&cfg2, args.services / 3 + 1).context("no service chain to edit")?;
    rows.extend(daemon::rows(&ours, bin_dir, &work, (args.services / 3 + 1, svc), bare_edit));

    // A resync that finds nothing to do.
    let noop = repeated(args.repeat, || iptproxy(&["apply"]))?;
    if noop.success && !noop.stdout.starts_with("No changes") {
        bail!("the no-op resync changed something: {}", noop.stdout);
    }
    let mut r = row(
        "no-op resync (`iptproxy apply`, nothing to change)",
        if noop.success { secs(noop.wall) } else { failed("apply", &noop) },
    );
    r.reference = save_took.map(|t| (secs(t), "`iptables-save` alone".to_string()));
    if let (Some(s), Some((Cell::Time(f), _))) = (save_took, &full) {
        r.kube = Some((secs(s + *f), "save + everything rewritten in one transaction".into()));
    }
    rows.push(r);
    Ok(rows)
}

/// Compares `text`, IPv4 `iptables-save` output, with `cfg`, as `iptproxy plan` does while
/// the tool streams (empty text: a first sync).
fn compare_text<'a>(cfg: &'a config::Config, text: &str) -> Result<Vec<TableEdits<'a>>> {
    let mut found = Vec::new();
    for family in Family::ALL {
        let mut c = Comparer::new(cfg, family);
        if family == Family::Ipv4 {
            for line in text.lines() {
                c.line(line)?;
            }
        }
        found.extend(c.finish()?);
    }
    Ok(found)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Runs `f` `n` times; the run with the median wall time, with the highest peak RSS seen.
/// A failed run is returned at once.
fn repeated(n: usize, mut f: impl FnMut() -> Result<run::Measured>) -> Result<run::Measured> {
    let mut runs = Vec::new();
    for _ in 0..n.max(1) {
        let m = f()?;
        if !m.success {
            return Ok(m);
        }
        runs.push(m);
    }
    let peak = runs.iter().filter_map(|m| m.peak_kib).max();
    runs.sort_by_key(|m| m.wall);
    let mut mid = runs.swap_remove(runs.len() / 2);
    mid.peak_kib = peak;
    Ok(mid)
}

fn clone_cell(c: &Cell) -> Cell {
    match c {
        Cell::Time(d) => Cell::Time(*d),
        Cell::Mib(m) => Cell::Mib(*m),
        Cell::Text(t) => Cell::Text(t.clone()),
    }
}

fn count_chains(p: &plan::Plan) -> usize {
    p.tables.iter().map(|t| t.chains.len()).sum()
}

fn new_sep_chain(p: &plan::Plan) -> Option<String> {
    p.tables.iter().flat_map(|t| &t.chains).find(|c| c.action == plan::Action::Create).map(|c| c.chain.clone())
}

/// The load-balancing chain of service number `i`.
fn service_chain(cfg: &config::Config, i: usize) -> Option<String> {
    let name = format!("svc-{i:05}");
    let s = cfg.services.iter().find(|s| s.name == name)?;
    Some(iptproxy::chains::service_chain("SVC", s))
}

fn log_load(what: &str, before: &str) {
    eprintln!("({what}: load average before {before}, after {})", load());
}

/// iptproxy's runner, pointed into the benchmark's namespace.
struct NsRunner<'a>(&'a Netns, Backend);

impl Runner for NsRunner<'_> {
    fn save(&self, family: Family, _counters: bool, line: &mut dyn FnMut(&str)) -> Result<(), ExecError> {
        let program = format!("{}-{}-save", family.tool(), self.0.backend);
        let out = self
            .0
            .command(&program)
            .output()
            .map_err(|source| ExecError::Spawn { program: program.clone(), source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(ExecError::Failed { program, status: out.status.to_string(), stderr });
        }
        String::from_utf8_lossy(&out.stdout).lines().for_each(line);
        Ok(())
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), ExecError> {
        let program = format!("{}-{}-restore", family.tool(), self.0.backend);
        self.0.restore_with(&program, input).map(|_| ()).map_err(|e| ExecError::Failed {
            program,
            status: "failed".into(),
            stderr: format!("{e:#}"),
        })
    }

    fn describe(&self) -> String {
        self.0.backend.clone()
    }

    fn max_lines(&self) -> usize {
        self.1.max_lines()
    }
}
