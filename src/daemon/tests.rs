//! The loop's decisions, with a fake kernel and a clock the tests move: what is read, what
//! is applied, when it retries. The real binary against the real kernel is in the
//! integration tests (`tests/it/daemon`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use notify::EventKind;
use notify::event::{ModifyKind, RenameMode};

use super::*;

/// What the fake kernel was asked and how it answers. Its live rules are always empty, so
/// every full sync plans everything; what matters here is when the daemon reads and writes.
#[derive(Default)]
struct Kernel {
    saves: usize,
    restores: Vec<String>,
    /// How many restores fail from now on.
    failing: usize,
    /// How canaries answer: `None` means intact.
    canary: Option<Result<Option<Vec<String>>, ()>>,
    /// The other chains, (table, chain) to rules, as the restores left them (the full syncs
    /// create them: the live rules they read are empty).
    chains: BTreeMap<(String, String), Vec<String>>,
    /// The chains read back with `list_chain`.
    listed: Vec<String>,
}

impl Kernel {
    /// Carries out `iptables-restore --noflush` input, the commands iptproxy writes.
    fn carry_out(&mut self, input: &str) {
        let mut table = String::new();
        for line in input.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
            } else if let Some(declared) = line.strip_prefix(':') {
                // Declaring a chain that exists flushes it.
                let name = declared.split(' ').next().unwrap_or_default();
                self.chains.insert((table.clone(), name.to_string()), Vec::new());
            } else if let [verb, chain, rest] = line.splitn(3, ' ').collect::<Vec<_>>()[..] {
                let rules = self.chains.entry((table.clone(), chain.to_string())).or_default();
                let (at, spec) = match rest.split_once(' ') {
                    Some((n, spec)) if n.parse::<usize>().is_ok() => (n.parse::<usize>().unwrap() - 1, spec),
                    _ => (usize::MAX, rest),
                };
                match (verb, at) {
                    ("-A", _) => rules.push(rest.to_string()),
                    ("-I", usize::MAX) => rules.insert(0, spec.to_string()),
                    ("-I", at) => rules.insert(at, spec.to_string()),
                    ("-R", at) => rules[at] = spec.to_string(),
                    ("-D", usize::MAX) => rules.retain(|r| r != spec),
                    _ => panic!("not a command iptproxy writes: {line}"),
                }
            } else if let [verb, chain] = line.splitn(2, ' ').collect::<Vec<_>>()[..] {
                let key = (table.clone(), chain.to_string());
                match verb {
                    "-F" => self.chains.entry(key).or_default().clear(),
                    "-X" => drop(self.chains.remove(&key)),
                    _ => panic!("not a command iptproxy writes: {line}"),
                }
            }
        }
    }

    /// The name of the one chain of `table` whose name starts with `prefix`.
    fn chain(&self, table: &str, prefix: &str) -> String {
        let mut names = self.chains.keys().filter(|(t, c)| t == table && c.starts_with(prefix));
        names.next().map(|(_, c)| c.clone()).unwrap()
    }
}

struct Fake(Rc<RefCell<Kernel>>);

impl Runner for Fake {
    fn save(&self, _: Family, _: bool, _: &mut dyn FnMut(&str)) -> Result<(), ExecError> {
        self.0.borrow_mut().saves += 1;
        Ok(())
    }

    fn restore(&self, _: Family, input: &str) -> Result<(), ExecError> {
        let mut k = self.0.borrow_mut();
        if k.failing > 0 {
            k.failing -= 1;
            let error = "Another app is currently holding the xtables lock".to_string();
            return Err(ExecError::Failed { program: "iptables-restore".into(), status: "4".into(), stderr: error });
        }
        k.restores.push(input.to_string());
        k.carry_out(input);
        Ok(())
    }

    fn list_chain(&self, _: Family, table: &str, chain: &str) -> Result<Option<Vec<String>>, ExecError> {
        let mut k = self.0.borrow_mut();
        if chain != crate::chains::CANARY {
            k.listed.push(chain.to_string());
            return Ok(k.chains.get(&(table.to_string(), chain.to_string())).cloned());
        }
        match &k.canary {
            None => Ok(Some(vec![crate::chains::CANARY_RULE.to_string()])),
            Some(Ok(answer)) => Ok(answer.clone()),
            Some(Err(())) => Err(ExecError::NotFound { program: "iptables".into() }),
        }
    }

    fn describe(&self) -> String {
        "fake".into()
    }
}

use crate::ruleset::Family;

const WEB: &str = "[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nendpoints = [\"198.19.0.2:8080\"]\n";

struct Setup {
    dir: tempfile::TempDir,
    kernel: Rc<RefCell<Kernel>>,
    daemon: Daemon,
    now: Instant,
}

impl Setup {
    /// A daemon on a directory holding `files`, started.
    fn start(files: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let kernel = Rc::new(RefCell::new(Kernel::default()));
        let k = Rc::clone(&kernel);
        let make_runner: MakeRunner = Box::new(move |_| Box::new(Fake(Rc::clone(&k))));
        let options = Options {
            config_dir: dir.path().to_path_buf(),
            state_file: dir.path().join(".state/state.json"),
            backend: Choice::Nft,
            trust: crate::config::Trust::Strict,
        };
        let now = Instant::now();
        let mut daemon = Daemon::new(options, "fake", make_runner, now);
        daemon.start(now);
        Setup { dir, kernel, daemon, now }
    }

    fn saves(&self) -> usize {
        self.kernel.borrow().saves
    }

    fn restores(&self) -> Vec<String> {
        self.kernel.borrow().restores.clone()
    }

    /// Writes a file and tells the daemon, as the watcher would.
    fn write(&mut self, name: &str, text: &str) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let event = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::To))).add_path(path);
        self.daemon.handle(Event::Files(Ok(event)), self.now);
    }

    /// Moves the clock to the daemon's next deadline and runs what is due there.
    fn advance(&mut self) -> Duration {
        let next = self.daemon.next_wake(self.now);
        let step = next.saturating_duration_since(self.now);
        self.now = next;
        self.daemon.tick(next);
        step
    }

    /// Moves the clock by `d`, running what falls due.
    fn wait(&mut self, d: Duration) {
        let end = self.now + d;
        while self.daemon.next_wake(self.now) <= end {
            self.advance();
        }
        self.now = end;
    }

    /// Whether the last full sync (a nat and a filter transaction) wrote `needle`.
    fn last_sync_holds(&self, needle: &str) -> bool {
        self.restores().iter().rev().take(2).any(|r| r.contains(needle))
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn settings(canary: &str, resync: &str) -> String {
    format!("[settings]\ncanary_interval = \"{canary}\"\nresync_interval = \"{resync}\"\n")
}

#[test]
fn start_reads_the_live_rules_applies_and_records() {
    let s = Setup::start(&[("web.toml", WEB)]);
    assert_eq!(s.saves(), 2, "one iptables-save per family");
    assert_eq!(s.restores().len(), 2, "nat and filter");
    let state = s.daemon.state();
    assert!(state.in_sync);
    assert_eq!(state.last_apply.as_ref().map(|a| a.reason.as_str()), Some("start"));
    assert_eq!(state.config.map(|c| c.services), Some(1));
    assert!(Path::new(&s.path(".state/state.json")).exists(), "the state file is written");
}

#[test]
fn a_file_change_is_planned_against_the_record_without_reading_the_rules() {
    let mut s = Setup::start(&[("web.toml", WEB)]);
    s.write("web.toml", &WEB.replace("198.19.0.2:8080", "198.19.0.3:8080"));
    assert_eq!(s.advance(), watch::QUIET_REPLACED, "the reload waits for the files to settle");
    assert_eq!(s.saves(), 2, "no iptables-save for a file change");
    let restores = s.restores();
    assert_eq!(restores.len(), 3);
    let change = &restores[2];
    assert!(change.contains("--to-destination 198.19.0.3:8080"), "{change}");
    assert!(!change.contains("CANARY") && !change.contains("MARK-MASQ -j MARK"), "only the change:\n{change}");
    assert_eq!(s.daemon.state().last_apply.as_ref().map(|a| a.reason.as_str()), Some("files changed"));
    let svc = s.kernel.borrow().chain("nat", "IPTPROXY-SVC-");
    assert_eq!(s.kernel.borrow().listed, [svc], "the chain edited by position was read back");
}

#[test]
fn a_chain_of_ours_edited_by_hand_is_caught_by_the_read_back_and_repaired() {
    let mut s = Setup::start(&[("web.toml", WEB)]);
    let svc = s.kernel.borrow().chain("nat", "IPTPROXY-SVC-");
    s.kernel.borrow_mut().chains.entry(("nat".into(), svc)).or_default().insert(0, "-j RETURN".into());
    s.write("web.toml", &WEB.replace("198.19.0.2", "198.19.0.3"));
    s.advance();
    // The change, planned from the record, replaced the hand-made rule instead of ours.
    assert_eq!(s.saves(), 4, "the read-back saw it: the live rules were read");
    let state = s.daemon.state();
    assert!(state.in_sync && state.apply_error.is_none(), "{state:?}");
    assert!(s.last_sync_holds("198.19.0.3:8080"));
}

#[test]
fn a_burst_of_changes_is_one_reload_and_an_unchanged_result_applies_nothing() {
    let mut s = Setup::start(&[("web.toml", WEB)]);
    for i in 0..5 {
        s.write(
            &format!("svc{i}.toml"),
            &WEB.replace("\"web\"", &format!("\"s{i}\"")).replace("0.10", &format!("0.{i}")),
        );
        s.now += watch::QUIET_REPLACED / 2;
        s.daemon.tick(s.now);
    }
    assert_eq!(s.restores().len(), 2, "nothing before the burst settles");
    s.advance();
    assert_eq!(s.restores().len(), 3, "one apply for the burst");
    s.write("svc0.toml", &std::fs::read_to_string(s.path("svc0.toml")).unwrap());
    s.advance();
    assert_eq!(s.restores().len(), 3, "same rules, nothing applied");
}

#[test]
fn an_invalid_config_applies_nothing_and_the_last_good_one_stays_in_force() {
    let mut s = Setup::start(&[("web.toml", WEB), ("settings.toml", &settings("5s", "1h"))]);
    s.write("web.toml", &WEB.replace("port = 80", "port = 80000"));
    s.advance();
    assert_eq!(s.restores().len(), 2, "nothing applied");
    let state = s.daemon.state();
    let error = state.config_error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
    assert!(error.starts_with(&format!("{}:4: ", s.path("web.toml"))), "{error}");
    assert!(state.status.starts_with(&format!("config error: {}:4: ", s.path("web.toml"))), "{}", state.status);
    assert!(state.status.contains("(keeping the last good rules); 1 service, 1 endpoint"), "{}", state.status);

    // Rules wiped meanwhile: what comes back is the last good config, not the bad one.
    s.kernel.borrow_mut().canary = Some(Ok(None));
    s.wait(Duration::from_secs(5));
    s.kernel.borrow_mut().canary = None;
    let restores = s.restores();
    assert_eq!(restores.len(), 4, "nat and filter re-applied");
    assert!(restores[2].contains("-m tcp --dport 80 -j"), "{}", restores[2]);

    s.write("web.toml", &WEB.replace("198.19.0.2", "198.19.0.7"));
    s.advance();
    assert!(s.restores()[4].contains("198.19.0.7:8080"));
    assert!(s.daemon.state().config_error.is_none());
}

#[test]
fn with_no_valid_config_at_start_nothing_is_touched_until_one_arrives() {
    let mut s = Setup::start(&[("web.toml", "[[service]]\nname = \"web\"\n")]);
    assert_eq!((s.saves(), s.restores().len()), (0, 0), "no valid config, no iptables");
    assert!(
        s.daemon.state().status.contains("(nothing applied); no valid config loaded"),
        "{}",
        s.daemon.state().status
    );
    s.write("web.toml", WEB);
    s.advance();
    assert_eq!(s.saves(), 2, "the first apply reads the live rules");
    assert_eq!(s.restores().len(), 2);
}

#[test]
fn failures_are_retried_from_one_second_doubling_to_a_minute_until_they_pass() {
    let mut s = Setup::start(&[("web.toml", WEB)]);
    s.kernel.borrow_mut().failing = 1000;
    s.write("web.toml", &WEB.replace("198.19.0.2", "198.19.0.3"));
    s.advance();
    // The change against the record failed, and so did the immediate try against the live rules.
    assert_eq!(s.saves(), 4);
    let mut delays = Vec::new();
    for attempt in 2..11 {
        let mut waited = Duration::ZERO;
        while s.daemon.state().apply_error.as_ref().map(|f| f.attempts) != Some(attempt) {
            waited += s.advance();
        }
        delays.push(waited.as_secs());
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    let failure = s.daemon.state().apply_error.clone().unwrap();
    assert_eq!(failure.attempts, 10);
    assert!(failure.message.contains("xtables lock"), "{}", failure.message);
    assert!(s.daemon.state().status.starts_with("applying failed "), "{}", s.daemon.state().status);
    assert!(!s.daemon.state().in_sync);

    s.kernel.borrow_mut().failing = 0;
    assert_eq!(s.advance().as_secs(), 60);
    let state = s.daemon.state();
    assert!(state.apply_error.is_none() && state.in_sync, "{state:?}");
    assert!(s.last_sync_holds("198.19.0.3:8080"), "the new config converged");
    assert_eq!(state.last_apply.as_ref().map(|a| a.reason.as_str()), Some("retry"));
}

#[test]
fn a_change_that_fails_against_the_record_is_tried_at_once_against_the_live_rules() {
    let mut s = Setup::start(&[("web.toml", WEB)]);
    s.kernel.borrow_mut().failing = 1;
    s.write("web.toml", &WEB.replace("198.19.0.2", "198.19.0.3"));
    s.advance();
    assert_eq!(s.saves(), 4, "the live rules were read");
    assert!(s.daemon.state().in_sync && s.daemon.state().apply_error.is_none());
}

#[test]
fn a_canary_hit_reapplies_everything_and_an_unreadable_canary_only_warns() {
    let mut s = Setup::start(&[("web.toml", WEB), ("settings.toml", &settings("10s", "1h"))]);
    s.kernel.borrow_mut().canary = Some(Err(()));
    s.wait(Duration::from_secs(10));
    assert_eq!(s.saves(), 2, "a canary that cannot be read is no hit");
    s.kernel.borrow_mut().canary = Some(Ok(Some(Vec::new())));
    s.wait(Duration::from_secs(10));
    assert_eq!(s.saves(), 4, "a flushed canary: the live rules are read and repaired");
    let state = s.daemon.state();
    assert_eq!(state.canary_hits, 2, "nat and filter both");
    let hit = state.last_canary_hit.as_ref().map(|h| h.message.as_str());
    assert_eq!(hit, Some("the IPv4 nat table was flushed, the IPv4 filter table was flushed"));
}

#[test]
fn drift_is_looked_for_every_resync_interval() {
    let mut s = Setup::start(&[("web.toml", WEB), ("settings.toml", &settings("1h", "30s"))]);
    s.wait(Duration::from_secs(29));
    assert_eq!(s.saves(), 2);
    s.wait(Duration::from_secs(1));
    assert_eq!(s.saves(), 4);
    s.wait(Duration::from_secs(30));
    assert_eq!(s.saves(), 6);
}

#[test]
fn sighup_rereads_the_files_and_the_live_rules() {
    let mut s = Setup::start(&[("web.toml", WEB)]);
    // Written without an event reaching the daemon.
    std::fs::write(s.dir.path().join("web.toml"), WEB.replace("198.19.0.2", "198.19.0.5")).unwrap();
    s.daemon.handle(Event::Signal(SIGHUP), s.now);
    assert_eq!(s.saves(), 4);
    assert!(s.last_sync_holds("198.19.0.5:8080"));
    assert_eq!(s.daemon.state().last_apply.as_ref().map(|a| a.reason.as_str()), Some("SIGHUP"));
}

#[test]
fn sigterm_and_sigint_stop_without_touching_the_rules() {
    for signal in [SIGTERM, SIGINT] {
        let mut s = Setup::start(&[("web.toml", WEB)]);
        s.daemon.handle(Event::Signal(signal), s.now);
        assert!(s.daemon.is_stopping());
        assert_eq!(s.restores().len(), 2);
    }
}

#[test]
fn a_file_being_written_holds_the_reload_back() {
    let mut s = Setup::start(&[("web.toml", WEB)]);
    let path = s.dir.path().join("web.toml");
    let data = notify::Event::new(EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)));
    s.daemon.handle(Event::Files(Ok(data.add_path(path.clone()))), s.now);
    s.wait(Duration::from_secs(30));
    assert_eq!(s.restores().len(), 2, "no reload while the file is open");
    std::fs::write(&path, WEB.replace("198.19.0.2", "198.19.0.6")).unwrap();
    let closed =
        notify::Event::new(EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write)));
    s.daemon.handle(Event::Files(Ok(closed.add_path(path))), s.now);
    s.advance();
    assert_eq!(s.restores().len(), 3);
}

#[test]
fn a_resync_while_a_file_is_being_written_does_not_read_it() {
    let mut s = Setup::start(&[("web.toml", WEB), ("settings.toml", &settings("1h", "30s"))]);
    let path = s.dir.path().join("web.toml");
    let data = notify::Event::new(EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)));
    s.daemon.handle(Event::Files(Ok(data.add_path(path.clone()))), s.now);
    std::fs::write(&path, WEB.replace("198.19.0.2", "198.19.0.8")).unwrap();
    s.wait(Duration::from_secs(30));
    assert_eq!(s.saves(), 4, "the resync ran");
    assert!(s.last_sync_holds("198.19.0.2:8080") && !s.last_sync_holds("198.19.0.8"), "{:?}", s.restores());
}

#[test]
fn a_settings_change_that_reaches_every_rule_reads_the_live_rules() {
    let mut s = Setup::start(&[("web.toml", WEB), ("settings.toml", &settings("1h", "1h"))]);
    s.write("settings.toml", &format!("{}cluster_cidrs = [\"198.19.0.0/16\"]\n", settings("1h", "1h")));
    s.advance();
    assert_eq!(s.saves(), 4, "planned against the live rules");
    assert!(s.last_sync_holds("-j IPTPROXY-MARK-OUTSIDE"), "{:?}", s.restores());
    // Intervals shape no rule: nothing to plan, nothing read.
    s.write("settings.toml", &format!("{}cluster_cidrs = [\"198.19.0.0/16\"]\n", settings("1h", "2h")));
    s.advance();
    assert_eq!((s.saves(), s.restores().len()), (4, 4));
}

#[test]
fn a_service_moved_to_another_file_applies_nothing() {
    let mut s = Setup::start(&[("web.toml", WEB)]);
    s.write("web.toml", "");
    s.write("moved.toml", WEB);
    s.advance();
    assert_eq!((s.saves(), s.restores().len()), (2, 2));
    assert!(s.daemon.state().apply_error.is_none() && s.daemon.state().config_error.is_none());
}
