//! The `iptproxy` command line: argument definitions and what each command does.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::apply;
use crate::backend::{self, Choice};
use crate::compare;
use crate::config::{self, Config};
use crate::confirm;
use crate::edits;
use crate::exec::{Runner, System};
use crate::plan::{self, Plan};
use crate::reconcile;
use crate::render;
use crate::report::{self, Style};
use crate::restore;
use crate::ruleset::{Family, Ruleset};

#[derive(Debug, Parser)]
#[command(name = "iptproxy", version, about = "Keep iptables service rules equal to TOML files, with minimal edits")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The `iptproxyd` command line: the daemon that keeps the rules equal to the files.
#[derive(Debug, Parser)]
#[command(
    name = "iptproxyd",
    version,
    about = "Keep iptables service rules equal to TOML files: watch, reconcile, repair"
)]
pub struct DaemonCli {
    #[command(flatten)]
    pub global: Global,
}

/// Options every iptproxy program takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Directory of *.toml service files.
    #[arg(short = 'c', long, env = "IPTPROXY_CONFIG_DIR", default_value = "/etc/iptproxy", global = true)]
    pub config_dir: PathBuf,
    /// Which iptables to drive: auto looks where the host's rules are.
    #[arg(long, value_enum, default_value_t = Choice::Auto, global = true)]
    pub backend: Choice,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Where iptproxyd writes its state, and `iptproxy status` reads it.
    #[arg(long, env = "IPTPROXY_STATE_FILE", default_value = crate::daemon::state::DEFAULT_STATE_FILE, global = true)]
    pub state_file: PathBuf,
    /// Read config files and directories that users other than root can change. As root,
    /// these are refused by default, as sshd's StrictModes refuses them.
    #[arg(long, env = "IPTPROXY_ALLOW_INSECURE_CONFIG", global = true, action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_insecure_config: bool,
}

impl Global {
    /// How far the config files must be trusted.
    pub fn trust(&self) -> config::Trust {
        config::Trust::for_process(self.allow_insecure_config)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate the config only: no root needed, no iptables run.
    Check,
    /// Print the full desired ruleset as iptables-restore input.
    Render {
        #[arg(long, value_enum, default_value_t = FamilyArg::All)]
        family: FamilyArg,
    },
    /// Show what apply would change, as a diff per table and chain.
    Plan {
        /// Exit 0 when there is nothing to change, 2 when there is (1 on error).
        #[arg(long)]
        detailed_exitcode: bool,
        /// Print the plan as JSON.
        #[arg(long, conflicts_with = "script")]
        json: bool,
        /// Print the exact iptables-restore input that apply would run.
        #[arg(long)]
        script: bool,
    },
    /// Make the live rules match the config.
    Apply {
        /// Then wait this long (e.g. 30s) for `iptproxy confirm` or Enter, else put the
        /// previous iptproxy rules back.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        confirm: Option<std::time::Duration>,
        #[command(flatten)]
        run: RunDir,
    },
    /// Keep the rules of an `apply --confirm` that is waiting.
    Confirm {
        #[command(flatten)]
        run: RunDir,
    },
    /// Remove every chain and rule iptproxy owns, and nothing else.
    Cleanup,
    /// Show what iptproxyd did last, and the traffic per service and endpoint.
    Status {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where `apply --confirm` and `confirm` meet.
#[derive(Debug, Clone, clap::Args)]
pub struct RunDir {
    /// Directory for the confirmation rendezvous.
    #[arg(long, env = "IPTPROXY_RUN_DIR", default_value = confirm::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 30s, 2m)"))?;
    match d.is_zero() {
        true => Err("must be more than 0s".into()),
        false => Ok(d),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    All,
    Ipv4,
    Ipv6,
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Check => check(&cli.global),
        Command::Render { family } => render_cmd(&cli.global, family),
        Command::Plan { detailed_exitcode, json, script } => {
            let format = match (json, script) {
                (true, _) => PlanFormat::Json,
                (_, true) => PlanFormat::Script,
                _ => PlanFormat::Diff,
            };
            plan_cmd(&cli.global, detailed_exitcode, format)
        }
        Command::Apply { confirm: None, .. } => apply_cmd(&cli.global),
        Command::Apply { confirm: Some(timeout), run } => apply_confirmed(&cli.global, timeout, &run.run_dir),
        Command::Confirm { run } => {
            let pid = confirm::confirm(&run.run_dir)?;
            println!("Confirmed: the rules applied by iptproxy (pid {pid}) stay.");
            Ok(0)
        }
        Command::Cleanup => cleanup(&cli.global),
        Command::Status { json } => crate::status::run(&cli.global, json),
    }
}

/// Loads the config, printing every error to stderr. `None` means invalid (exit 1).
pub fn load(global: &Global) -> Option<Config> {
    match config::load_dir_trusting(&global.config_dir, global.trust()) {
        Ok(config) => Some(config),
        Err(errors) => {
            // Enough to act on; a huge broken file must not flood the terminal or the journal.
            const SHOWN: usize = 50;
            for e in errors.0.iter().take(SHOWN) {
                eprintln!("error: {e}");
            }
            let n = errors.0.len();
            if n > SHOWN {
                eprintln!("... and {} more", n - SHOWN);
            }
            eprintln!("{n} error{} in the configuration; nothing was changed", if n == 1 { "" } else { "s" });
            None
        }
    }
}

fn check(global: &Global) -> Result<u8> {
    let Some(config) = load(global) else {
        return Ok(1);
    };
    let v6 = config.services.iter().filter(|s| s.family() == Family::Ipv6).count();
    println!(
        "Configuration OK: {} ({} IPv4, {v6} IPv6), {}, in {} under {}.",
        count(config.services.len(), "service"),
        config.services.len() - v6,
        count(config.endpoint_count(), "endpoint"),
        count(config.files.len(), "file"),
        global.config_dir.display()
    );
    Ok(0)
}

/// `1 service`, `3 services`.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn render_cmd(global: &Global, family: FamilyArg) -> Result<u8> {
    let Some(config) = load(global) else {
        return Ok(1);
    };
    let desired = render::render(&config);
    for f in Family::ALL {
        if family == FamilyArg::All || (family == FamilyArg::Ipv4) == (f == Family::Ipv4) {
            let tables: Vec<_> = desired.family(f).collect();
            if !tables.is_empty() {
                println!("# {f}: {}-restore input", f.tool());
                for t in tables {
                    print!("{}", restore::full(t));
                }
            }
        }
    }
    Ok(0)
}

/// The runner for the chosen backend, with the config's lock wait.
pub fn runner(global: &Global, config: &Config) -> Result<System> {
    let detected = backend::resolve(global.backend).context("choosing the iptables backend")?;
    log::info!("using iptables-{}: {}", detected.backend, detected.reason);
    Ok(System::new(detected.backend, config.settings.lock_wait))
}

/// Reads the live rules and plans the change to `desired`.
fn plan_against(runner: &dyn Runner, desired: &Ruleset) -> Result<Plan> {
    let live =
        reconcile::read_live(runner, |f| desired.family(f).next().is_some()).context("reading the live rules")?;
    Ok(plan::plan(desired, &live))
}

enum PlanFormat {
    Diff,
    Json,
    Script,
}

fn plan_cmd(global: &Global, detailed_exitcode: bool, format: PlanFormat) -> Result<u8> {
    let Some(config) = load(global) else { return Ok(1) };
    let runner = runner(global, &config)?;
    let edits = compare::read(&runner, &config).context("reading the live rules")?;
    let changes = match format {
        PlanFormat::Script => {
            // Exactly the transactions `apply` would run.
            let scripts = apply::scripts(&edits, runner.max_lines())?;
            for script in &scripts {
                println!("# {}-restore --noflush ({})", script.family.tool(), script.family);
                print!("{}", script.text);
            }
            !scripts.is_empty()
        }
        PlanFormat::Diff | PlanFormat::Json => {
            let plan = edits::to_plan(&edits);
            match format {
                PlanFormat::Json => println!("{}", serde_json::to_string_pretty(&report::json(&plan))?),
                _ => print!("{}", report::text(&plan, Style::detect())),
            }
            !plan.is_empty()
        }
    };
    Ok(if detailed_exitcode && changes { 2 } else { 0 })
}

/// How many times `apply` reads and plans again when another program changes our chains
/// under it, before it gives up.
const APPLY_ROUNDS: usize = 3;

fn apply_cmd(global: &Global) -> Result<u8> {
    let Some(config) = load(global) else {
        return Ok(1);
    };
    let runner = runner(global, &config)?;
    let done = reconcile::sync(&runner, &config, runner.max_lines(), APPLY_ROUNDS)?;
    print_applied(&done);
    Ok(0)
}

/// Prints what an apply changed; false when nothing needed to change.
fn print_applied(done: &reconcile::Synced) -> bool {
    let Some(first) = done.applied.first() else {
        println!("No changes. The live rules match the configuration.");
        return false;
    };
    println!("{}", report::applied_line(first));
    if done.applied.len() > 1 {
        println!(
            "Another program changed iptproxy's chains during the apply; they were read again and repaired \
             ({} passes).",
            done.applied.len()
        );
    }
    true
}

/// `apply --confirm`: apply, wait for a confirmation, else put our previous rules back.
/// Output after the wait ignores write errors: the operator's terminal may be gone, and
/// that must not stop the rollback.
fn apply_confirmed(global: &Global, timeout: std::time::Duration, run_dir: &std::path::Path) -> Result<u8> {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let Some(config) = load(global) else {
        return Ok(1);
    };
    let runner = runner(global, &config)?;
    // Claimed before anything changes: if it cannot be, nothing is applied.
    let pending = confirm::Pending::claim(run_dir)?;
    // A lost SSH session (SIGHUP) must not kill us before the rollback; SIGINT and SIGTERM
    // roll back at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    let hangup = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted)).context("handling signals")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup).context("handling signals")?;

    // What a rollback puts back: iptproxy's part of the rules as they are now.
    let needed = |f: Family| config.services.iter().any(|s| s.family() == f);
    let before = reconcile::read_live(&runner, needed).context("reading the live rules")?;
    let done = reconcile::sync(&runner, &config, runner.max_lines(), APPLY_ROUNDS)?;
    if !print_applied(&done) {
        return Ok(0);
    }
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "Confirm within {} with `iptproxy confirm`{}, or the previous iptproxy rules come back.",
        humantime::format_duration(timeout),
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) { " or Enter here" } else { "" }
    );
    let _ = out.flush();
    let answer = pending.wait(timeout, &interrupted);
    drop(pending);
    match answer {
        confirm::Answer::Confirmed | confirm::Answer::KeyPressed => {
            let _ = writeln!(out, "Confirmed: the new rules stay.");
            Ok(0)
        }
        confirm::Answer::TimedOut | confirm::Answer::Interrupted => {
            let why = match answer {
                confirm::Answer::TimedOut => format!("not confirmed within {}", humantime::format_duration(timeout)),
                _ => "interrupted".to_string(),
            };
            let previous = confirm::ours(&before);
            reconcile::converge(&runner, &previous, runner.max_lines(), APPLY_ROUNDS)
                .with_context(|| format!("{why}, but putting the previous iptproxy rules back failed"))?;
            let _ = writeln!(std::io::stderr(), "{why}: the previous iptproxy rules were put back");
            Ok(1)
        }
    }
}

fn cleanup(global: &Global) -> Result<u8> {
    // The config is not needed to know what is ours, but its lock wait is used when valid.
    let config = config::load_dir_trusting(&global.config_dir, global.trust()).unwrap_or_default();
    let runner = runner(global, &config)?;
    let plan = plan_against(&runner, &Ruleset::default())?;
    if plan.is_empty() {
        println!("Nothing to clean up: no iptproxy rules are present.");
        return Ok(0);
    }
    crate::apply::plan(&runner, &plan, runner.max_lines())?;
    let s = plan.summary();
    println!("Removed {} chains and {} rules.", s.chains_deleted, s.rules_deleted);
    Ok(0)
}

/// Logging for every iptproxy program: env_logger, `RUST_LOG` first, then `-v`.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    crate::logging::init(level);
}
