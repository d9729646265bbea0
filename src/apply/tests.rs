use std::cell::RefCell;

use super::*;
use crate::compare::Comparer;
use crate::config::{Config, from_sources};
use crate::plan::{Action, ChainPlan, Op, TablePlan};
use crate::ruleset::Family;

/// Records what it is asked to restore; `fail` makes every restore fail with that stderr.
#[derive(Default)]
struct Recorder {
    restores: RefCell<Vec<String>>,
    streamed: RefCell<usize>,
    fail: Option<String>,
}

impl Runner for Recorder {
    fn save(&self, _: Family, _: bool, _: &mut dyn FnMut(&str)) -> Result<(), ExecError> {
        Ok(())
    }

    fn restore(&self, _: Family, input: &str) -> Result<(), ExecError> {
        if let Some(stderr) = &self.fail {
            let stderr = stderr.clone();
            return Err(ExecError::Failed { program: "iptables-restore".into(), status: "1".into(), stderr });
        }
        self.restores.borrow_mut().push(input.to_string());
        Ok(())
    }

    fn restore_lines(&self, family: Family, input: &mut crate::exec::Input<'_>) -> Result<(), ExecError> {
        *self.streamed.borrow_mut() += 1;
        let mut text = String::new();
        input(&mut |l| {
            text.push_str(l);
            text.push('\n');
        });
        self.restore(family, &text)
    }

    fn describe(&self) -> String {
        "recorder".into()
    }
}

/// Services of three endpoints each: five chains a service, and their rules in the shared ones.
fn config(n: usize) -> Config {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[service]]\nname='s{i}'\nvip='198.18.0.{}'\nport=80\nendpoints=['198.19.0.1:{p}','198.19.0.2:{p}','198.19.0.3:{p}']\n",
            i + 1,
            p = 8000 + i
        ));
    }
    from_sources(vec![("a.toml".into(), text.into_bytes())]).expect("valid")
}

/// A first sync's edits (nothing live) for `config`.
fn first_sync(config: &Config) -> Vec<TableEdits<'_>> {
    Comparer::new(config, Family::Ipv4).finish().expect("no output is fine")
}

#[test]
fn transactions_are_bounded_and_never_split_a_service() {
    let c = config(12);
    let rec = Recorder::default();
    let summary = edits(&rec, &first_sync(&c), 20).expect("applied");
    assert_eq!(summary, crate::edits::to_plan(&first_sync(&c)).summary());
    let restores = rec.restores.borrow();
    assert!(restores.len() > 5, "{}", restores.len());
    for s in &c.services {
        let id = format!("\"{}:80/tcp -> ", s.name);
        let holding: Vec<&String> = restores.iter().filter(|t| t.contains(&id)).collect();
        assert_eq!(holding.len(), 1, "all of {}'s chains in one transaction", s.name);
    }
    for t in restores.iter() {
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with('*') && lines.last() == Some(&"COMMIT"), "{t}");
        // A service's group is 5 declarations and 11 rules: two fit in 20 lines, with the header.
        assert!(lines.len() <= 20 + 16, "{t}");
    }
    assert_eq!(*rec.streamed.borrow(), 0);
}

#[test]
fn unlimited_transactions_are_streamed_one_a_table_declarations_first_in_name_order() {
    let c = config(12);
    let rec = Recorder::default();
    edits(&rec, &first_sync(&c), usize::MAX).expect("applied");
    assert_eq!(*rec.streamed.borrow(), 2, "nat and filter");
    let restores = rec.restores.borrow();
    let nat: Vec<&str> = restores[0].lines().collect();
    let last_decl = nat.iter().rposition(|l| l.starts_with(':')).expect("declarations");
    let first_rule = nat.iter().position(|l| l.starts_with("-A")).expect("rules");
    assert!(last_decl < first_rule, "every chain declared before any rule");
    let declared: Vec<&str> = nat.iter().copied().filter(|l| l.starts_with(':')).collect();
    assert!(declared.len() > 12 && declared.is_sorted(), "in name order, which legacy creates fastest");
    let text: Vec<String> = scripts(&first_sync(&c), usize::MAX).expect("safe").into_iter().map(|s| s.text).collect();
    assert_eq!(*restores, text, "what `plan --script` prints");
    // The same lines as in bounded transactions, once each.
    let bounded = Recorder::default();
    edits(&bounded, &first_sync(&c), 20).expect("applied");
    let mut all: Vec<String> = bounded
        .restores
        .borrow()
        .iter()
        .flat_map(|t| t.lines().filter(|l| !l.starts_with('*') && *l != "COMMIT").map(String::from).collect::<Vec<_>>())
        .collect();
    let mut streamed: Vec<String> = restores
        .iter()
        .flat_map(|t| t.lines().filter(|l| !l.starts_with('*') && *l != "COMMIT").map(String::from).collect::<Vec<_>>())
        .collect();
    all.sort();
    streamed.sort();
    assert_eq!(all, streamed);
}

fn table(chains: Vec<ChainPlan>) -> TablePlan {
    TablePlan { family: Family::Ipv4, table: "nat".into(), chains }
}

fn create(name: &str, rule: &str) -> ChainPlan {
    let ops = vec![Op::Append { rule: rule.into() }];
    ChainPlan { chain: name.into(), action: Action::Create, before: vec![], after: vec![rule.into()], ops }
}

#[test]
fn a_refused_line_anywhere_runs_nothing() {
    let mut chains: Vec<ChainPlan> = (0..50).map(|i| create(&format!("IPTPROXY-SEP-{i}"), "-j RETURN")).collect();
    chains.push(create("IPTPROXY-BAD", "-j RETURN\n-F"));
    let edits_of = TableEdits::from_plan(&table(chains));
    for max_lines in [3, usize::MAX] {
        let rec = Recorder::default();
        match edits(&rec, std::slice::from_ref(&edits_of), max_lines) {
            Err(SyncError::Script(e)) => assert_eq!(e.chain, "IPTPROXY-BAD"),
            other => panic!("{other:?}"),
        }
        assert!(rec.restores.borrow().is_empty(), "nothing ran");
    }
}

#[test]
fn a_failure_names_its_line_chain_and_service_streamed_or_not() {
    let c = config(2);
    for max_lines in [crate::restore::DEFAULT_MAX_LINES, usize::MAX] {
        let rec = Recorder { fail: Some("iptables-restore: line 8 failed".into()), ..Recorder::default() };
        let edits_of = first_sync(&c);
        let Err(SyncError::Restore(f)) = edits(&rec, &edits_of, max_lines) else { panic!("it fails") };
        let text = {
            let ok = Recorder::default();
            edits(&ok, &edits_of, max_lines).expect("applied");
            ok.restores.borrow()[0].clone()
        };
        let line8 = text.lines().nth(7).expect("8 lines");
        assert_eq!(f.line.as_deref(), Some(line8), "{max_lines}");
        assert!(f.chain.as_deref().is_some_and(|c| line8.contains(c)), "{f}");
        assert_eq!(f.committed, 0);
    }
}

#[test]
fn finds_the_failing_line_in_both_backends_messages() {
    assert_eq!(failed_line("iptables-restore: line 5 failed"), Some(5));
    assert_eq!(
        failed_line(
            "iptables-restore v1.8.9 (nf_tables): Chain 'X' does not exist\nError occurred at line: 12\nTry `iptables-restore -h'"
        ),
        Some(12)
    );
    assert_eq!(failed_line("Another app is currently holding the xtables lock"), None);
}
