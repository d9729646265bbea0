//! `iptproxyd`: keeps the kernel's rules equal to the config files, for as long as it runs.
//!
//! One thread owns all the state. Events (file changes, signals) arrive on a channel; the
//! timers (settled file changes, retries, canary checks, resyncs, watchdog pings) are
//! deadlines of the same loop, so nothing runs concurrently and a hung apply stops the
//! watchdog pings, as it should.
//!
//! Between full resyncs, a file change is planned against the record of what was last
//! applied (no `iptables-save`), so it costs only the change. The record is the config
//! itself, not its rules: only the services that changed are rendered (see
//! [`crate::incremental`]); the service chains it edits by position are read back, and a
//! hand edit there that made the change land elsewhere brings a full resync at once. A
//! full resync reads the live rules, comparing them as they stream (see
//! [`crate::compare`]): at start, on SIGHUP, every `resync_interval`, after a canary hit,
//! on a retry, and for a change of the settings that shape every rule. A config that
//! fails to load is never applied: the last good one stays in force.

pub mod backoff;
pub mod canary;
pub mod state;
pub mod systemd;
pub mod watch;

use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::backend::{self, Choice};
use crate::config::{self, Config, Settings};
use crate::exec::{ExecError, Runner, System};
use crate::incremental;
use crate::plan::Summary;
use crate::reconcile::{self, SyncError};
use crate::render;
use crate::report;
use backoff::Backoff;
use state::{Applied, Counts, Failure, Stamped, State, unix};
use systemd::Systemd;
use watch::{Change, DirWatch, Settle};

/// Passes of read, plan, apply and read-back before another program's writes are an error.
const SYNC_ROUNDS: usize = 3;

#[derive(Debug, Clone)]
pub struct Options {
    pub config_dir: PathBuf,
    pub state_file: PathBuf,
    pub backend: Choice,
    /// How far the config files must be trusted (`--allow-insecure-config`).
    pub trust: config::Trust,
}

/// Why the daemon could not start. Once running, it never exits on a failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("choosing the iptables backend: {0}")]
    Backend(#[source] ExecError),
    #[error("{}: cannot watch the config directory: {source}; create it or point -c at it", dir.display())]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("cannot handle signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// What wakes the loop besides its timers.
#[derive(Debug)]
pub enum Event {
    Files(notify::Result<notify::Event>),
    Signal(i32),
}

/// Why a sync runs, for the log and the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Start,
    Files,
    Reload,
    Resync,
    Canary,
    Retry,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Start => "start",
            Reason::Files => "files changed",
            Reason::Reload => "SIGHUP",
            Reason::Resync => "resync",
            Reason::Canary => "canary",
            Reason::Retry => "retry",
        })
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: Options) -> Result<(), DaemonError> {
    let detected = backend::resolve(options.backend).map_err(DaemonError::Backend)?;
    log::info!("using iptables-{}: {}", detected.backend, detected.reason);
    let (tx, rx) = mpsc::channel();
    let files = tx.clone();
    // Watching starts before the first load, so no change in between goes unseen.
    let watcher = DirWatch::new(&options.config_dir, move |e| {
        let _ = files.send(Event::Files(e));
    })
    .map_err(|source| DaemonError::Watch { dir: options.config_dir.clone(), source })?;
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(DaemonError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .map_err(DaemonError::Signals)?;

    let b = detected.backend;
    let make_runner: MakeRunner = Box::new(move |lock_wait| Box::new(System::new(b, lock_wait)));
    let mut daemon = Daemon::new(options, &b.to_string(), make_runner, Instant::now());
    daemon.watch = Some((watcher, Instant::now() + watch::DIR_CHECK));
    daemon.start(Instant::now());
    daemon.serve(&rx);
    Ok(())
}

/// Makes the runner for a lock wait (a setting, so it can change with the config).
pub type MakeRunner = Box<dyn Fn(u32) -> Box<dyn Runner>>;

pub struct Daemon {
    dir: PathBuf,
    trust: config::Trust,
    state_file: PathBuf,
    make_runner: MakeRunner,
    runner: Box<dyn Runner>,
    /// The settings in force: the last valid config's.
    settings: Settings,
    /// The last valid config, whose rules are rendered from it on demand; `None` until one
    /// has loaded.
    desired: Option<Config>,
    /// Whether the kernel is known to hold `desired`, so that a change can be planned
    /// against it instead of against a fresh read.
    synced: bool,
    settle: Settle,
    logged_writing: bool,
    backoff: Backoff,
    retry_at: Option<Instant>,
    next_canary: Instant,
    next_resync: Instant,
    next_watchdog: Option<Instant>,
    /// The watch on the directory, and when to check next that it is still the one at the
    /// path (see [`DirWatch::renew`]). `None` where events are handed in by hand (tests).
    watch: Option<(DirWatch, Instant)>,
    systemd: Systemd,
    state: State,
    /// `READY=1` goes out once the rules are in place, or at start when there is no valid
    /// config to apply (an operator must act; the status says so).
    ready: bool,
    stopping: bool,
}

impl Daemon {
    pub fn new(options: Options, backend: &str, make_runner: MakeRunner, now: Instant) -> Daemon {
        let settings = Settings::default();
        let runner = make_runner(settings.lock_wait);
        let systemd = Systemd::from_env();
        let started = unix(SystemTime::now());
        let state = State {
            pid: std::process::id(),
            backend: backend.to_string(),
            config_dir: options.config_dir.clone(),
            started,
            updated: started,
            ..State::default()
        };
        Daemon {
            dir: options.config_dir,
            trust: options.trust,
            state_file: options.state_file,
            make_runner,
            runner,
            next_canary: now + secs(settings.canary_interval),
            next_resync: now + secs(settings.resync_interval),
            next_watchdog: systemd.watchdog_interval().map(|i| now + i),
            watch: None,
            settings,
            desired: None,
            synced: false,
            settle: Settle::default(),
            logged_writing: false,
            backoff: Backoff::default(),
            retry_at: None,
            systemd,
            state,
            ready: false,
            stopping: false,
        }
    }

    /// The first load and full sync. `READY=1` follows once the rules are in place: now,
    /// or after the retries of a failed apply. With no valid config there is nothing to
    /// wait for, so it follows at once, with the errors in `STATUS=`.
    pub fn start(&mut self, now: Instant) {
        log::info!("starting: config {}, state {}", self.dir.display(), self.state_file.display());
        self.resync(now, Reason::Start, true);
        if self.desired.is_none() {
            self.notify_ready();
        }
    }

    fn notify_ready(&mut self) {
        self.systemd.ready(&self.state.status);
        self.ready = true;
    }

    /// Handles events and timers until told to stop.
    pub fn serve(&mut self, events: &Receiver<Event>) {
        while !self.stopping {
            let now = Instant::now();
            match events.recv_timeout(self.next_wake(now).saturating_duration_since(now)) {
                Ok(event) => self.handle(event, Instant::now()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    log::error!("the file watcher and signal handler are gone; stopping");
                    break;
                }
            }
            if !self.stopping {
                self.tick(Instant::now());
            }
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The next moment a timer is due.
    pub fn next_wake(&self, now: Instant) -> Instant {
        // While a retry is pending, it is the next full sync, and canaries have nothing to guard.
        let guarding = self.desired.is_some() && self.retry_at.is_none();
        let timers = [
            self.settle.due(),
            self.retry_at,
            (guarding && self.synced).then_some(self.next_canary),
            guarding.then_some(self.next_resync),
            self.next_watchdog,
            self.watch.as_ref().map(|(_, next)| *next),
        ];
        timers.into_iter().flatten().min().unwrap_or(now + Duration::from_secs(60))
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Files(Ok(event)) => {
                for change in watch::classify(&event) {
                    log::debug!("{change:?}");
                    self.settle.note(change, now);
                }
            }
            Event::Files(Err(e)) => {
                log::warn!("watching {}: {e}; reading the directory again", self.dir.display());
                self.settle.note(Change::Rescan, now);
            }
            Event::Signal(SIGHUP) => {
                log::info!("SIGHUP: reloading the config and reading the live rules");
                self.systemd.reloading();
                self.resync(now, Reason::Reload, true);
                // A reload ends with READY=1 whatever its outcome; the status tells it.
                self.notify_ready();
            }
            Event::Signal(signal) => {
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                log::info!("{name}: stopping; the rules stay in place (`iptproxy cleanup` removes them)");
                self.systemd.stopping();
                self.stopping = true;
            }
        }
    }

    /// Runs whatever timers are due.
    pub fn tick(&mut self, now: Instant) {
        if let Some((watch, next)) = self.watch.as_mut().filter(|(_, next)| *next <= now) {
            *next = now + watch::DIR_CHECK;
            match watch.renew() {
                Ok(false) => {}
                Ok(true) => {
                    log::info!("{} was replaced; watching the new one and reading its files", self.dir.display());
                    self.settle.note(Change::Rescan, now);
                }
                Err(e) => log::warn!("watching {} again: {e}; retrying in {:?}", self.dir.display(), watch::DIR_CHECK),
            }
        }
        match self.settle.due() {
            Some(due) if due <= now => {
                self.settle.reset();
                self.logged_writing = false;
                self.files_changed(now);
            }
            None if !self.logged_writing && self.settle.writing().next().is_some() => {
                let files: Vec<_> = self.settle.writing().map(|p| p.display().to_string()).collect();
                log::info!("waiting for {} to be closed before reloading", files.join(", "));
                self.logged_writing = true;
            }
            _ => {}
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.resync(now, Reason::Retry, false);
        }
        let guarding = self.desired.is_some() && self.retry_at.is_none();
        if guarding && self.next_resync <= now {
            // Not while a config file is being written: it would be read half-written.
            let reload = self.settle.writing().next().is_none();
            self.resync(now, Reason::Resync, reload);
        }
        if guarding && self.synced && self.next_canary <= now {
            self.check_canaries(now);
        }
        if let Some(interval) = self.systemd.watchdog_interval() {
            if self.next_watchdog.is_some_and(|t| t <= now) {
                self.systemd.watchdog();
                self.next_watchdog = Some(now + interval);
            }
        }
    }

    fn files_changed(&mut self, now: Instant) {
        log::info!("config files changed; reloading");
        let Some(new) = self.load(now) else {
            self.publish();
            return;
        };
        if self.desired.as_ref().is_some_and(|old| old.same_rules(&new)) {
            log::debug!("the files changed, the rules they make did not");
            self.desired = Some(new);
            self.publish();
            return;
        }
        self.converge(new, Reason::Files, now, false);
    }

    /// Syncs with the live rules, first reloading the files when `reload`.
    fn resync(&mut self, now: Instant, reason: Reason, reload: bool) {
        let loaded = if reload { self.load(now) } else { None };
        match loaded.or_else(|| self.desired.take()) {
            Some(target) => self.converge(target, reason, now, true),
            None => self.publish(),
        }
    }

    /// Loads the files. `None` when they are invalid: the errors are logged and kept in
    /// the state, and the config in force stays as it is.
    fn load(&mut self, now: Instant) -> Option<Config> {
        match config::load_dir_trusting(&self.dir, self.trust) {
            Ok(config) => {
                if self.state.config_error.take().is_some() {
                    log::info!("the configuration is valid again");
                }
                self.adopt(&config.settings, now);
                let counts = Counts {
                    services: config.services.len(),
                    endpoints: config.endpoint_count(),
                    files: config.files.len(),
                };
                self.state.config = Some(counts);
                Some(config)
            }
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("{e}");
                }
                let kept = if self.desired.is_some() { "the last good rules stay in force" } else { "nothing applied" };
                let n = errors.0.len();
                log::error!("{n} error{} in the configuration; {kept}", if n == 1 { "" } else { "s" });
                let message = errors.to_string();
                if self.state.config_error.as_ref().is_none_or(|e| e.message != message) {
                    self.state.config_error = Some(Stamped { at: unix(SystemTime::now()), message });
                }
                None
            }
        }
    }

    /// Puts new settings in force: the lock wait, and the intervals (a shorter one takes
    /// effect now, not after the old one runs out).
    fn adopt(&mut self, settings: &Settings, now: Instant) {
        if settings.lock_wait != self.settings.lock_wait {
            self.runner = (self.make_runner)(settings.lock_wait);
        }
        self.next_canary = self.next_canary.min(now + secs(settings.canary_interval));
        self.next_resync = self.next_resync.min(now + secs(settings.resync_interval));
        self.settings = settings.clone();
    }

    /// Makes the kernel hold `target`: planned against the record of the last apply when
    /// it is trustworthy and `full` is not asked, else against the live rules.
    fn converge(&mut self, target: Config, reason: Reason, now: Instant, full: bool) {
        let started = Instant::now();
        let record = self.desired.as_ref().filter(|_| self.synced && !full);
        // `None` when the change reaches every rule (settings): then the live rules are read.
        let by_record = record.and_then(|old| incremental::between(old, &target)).map(|edits| {
            // The positions came from the record, not the kernel: in a chain of ours edited
            // by hand since, they landed on other rules. Reading back the chains edited by
            // position (`iptables -S CHAIN`: ms on nf_tables; legacy loads the table) tells.
            let (summary, drifted) = reconcile::apply_checked(&*self.runner, &edits, self.runner.max_lines())?;
            if drifted.is_empty() {
                Ok(summary)
            } else {
                Err(SyncError::NotAsApplied { chains: drifted.iter().map(ToString::to_string).collect() })
            }
        });
        let result = match by_record {
            Some(Ok(summary)) => Ok(summary),
            Some(Err(e)) => {
                // Most likely the live rules are not what the record says: read them.
                log::warn!("{reason}: {e}\n  reading the live rules and trying again");
                self.sync_with_live(&target, now)
            }
            None => self.sync_with_live(&target, now),
        };
        self.desired = Some(target);
        match result {
            Ok(summary) => self.succeeded(&summary, reason, started.elapsed()),
            Err(e) => self.failed(&e, reason, now),
        }
        self.publish();
        if self.synced && !self.ready {
            self.notify_ready();
        }
    }

    /// Reads the live rules, plans against them and applies (again, from a fresh read,
    /// when another program changes a chain under it; see [`reconcile::sync`]).
    fn sync_with_live(&mut self, target: &Config, now: Instant) -> Result<Summary, SyncError> {
        let done = reconcile::sync(&*self.runner, target, self.runner.max_lines(), SYNC_ROUNDS)?;
        self.state.last_full_sync = Some(unix(SystemTime::now()));
        self.next_resync = now + secs(self.settings.resync_interval);
        Ok(done.applied.first().copied().unwrap_or_default())
    }

    fn succeeded(&mut self, summary: &Summary, reason: Reason, took: Duration) {
        self.synced = true;
        self.backoff.reset();
        self.retry_at = None;
        if let Some(f) = self.state.apply_error.take() {
            log::info!("{reason}: applied after {} failed attempts", f.attempts);
        }
        if *summary == Summary::default() {
            log::debug!("{reason}: the live rules match the config ({} ms)", took.as_millis());
            return;
        }
        let line = format!("{} ({} ms)", report::applied_line(summary), took.as_millis());
        match reason {
            Reason::Resync | Reason::Canary => log::warn!("{reason}: the live rules had drifted; repaired. {line}"),
            _ => log::info!("{reason}: {line}"),
        }
        self.state.last_apply = Some(Applied::new(unix(SystemTime::now()), summary, &reason.to_string()));
    }

    fn failed(&mut self, e: &SyncError, reason: Reason, now: Instant) {
        self.synced = false;
        let delay = self.backoff.fail();
        self.retry_at = Some(now + delay);
        let at = unix(SystemTime::now());
        let since = self.state.apply_error.as_ref().map_or(at, |f| f.since);
        let attempts = self.backoff.failures();
        log::error!("{reason}: {e}\n  attempt {attempts} failed; retrying in {} s", delay.as_secs());
        self.state.apply_error =
            Some(Failure { since, at, message: e.to_string(), attempts, retry_at: at + delay.as_secs() });
    }

    fn check_canaries(&mut self, now: Instant) {
        self.next_canary = now + secs(self.settings.canary_interval);
        let Some(desired) = self.desired.as_ref().filter(|_| self.synced) else {
            return;
        };
        let (hits, errors) = canary::check(&*self.runner, &render::tables(desired));
        for (table, e) in errors {
            log::warn!("canary: cannot check the {table} table: {e}");
        }
        if hits.is_empty() {
            // Keeps the "... ago" of the status line current.
            self.state.status = self.state.status_line(unix(SystemTime::now()));
            self.systemd.status(&self.state.status);
            return;
        }
        for hit in &hits {
            log::warn!("canary: {hit}; re-applying every rule");
        }
        self.state.canary_hits += hits.len() as u64;
        let message = hits.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        self.state.last_canary_hit = Some(Stamped { at: unix(SystemTime::now()), message });
        self.resync(now, Reason::Canary, false);
    }

    /// Tells systemd and the state file where things stand.
    fn publish(&mut self) {
        let now = unix(SystemTime::now());
        self.state.updated = now;
        self.state.in_sync = self.synced;
        self.state.status = self.state.status_line(now);
        self.systemd.status(&self.state.status);
        if let Err(e) = state::write(&self.state_file, &self.state) {
            log::warn!("{e}");
        }
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

#[cfg(test)]
mod tests;
