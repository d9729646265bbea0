//! How a plan reads: a unified diff per table and chain, then a summary; or JSON.

use std::fmt::Write;

use similar::TextDiff;

use crate::plan::{Action, ChainPlan, Plan, Summary};

/// Terminal colors, used only when stdout is a terminal and `NO_COLOR` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn detect() -> Style {
        use std::io::IsTerminal;
        Style { color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }
}

/// The plan as a person reads it. Ends with the summary line.
pub fn text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    for table in &plan.tables {
        let _ = writeln!(out, "{}", style.paint("1", &format!("# {} {} table", table.family, table.table)));
        for chain in &table.chains {
            chain_diff(&mut out, &table.table, chain, style);
        }
        out.push('\n');
    }
    out.push_str(&summary_line(&plan.summary()));
    out.push('\n');
    out
}

fn chain_diff(out: &mut String, table: &str, chain: &ChainPlan, style: Style) {
    let (mark, what) = match chain.action {
        Action::Create => ("+", "chain to add"),
        Action::Update => ("~", "chain to change"),
        Action::Delete => ("-", "chain to delete"),
    };
    let about = chain.service().map(|s| format!(", service {s}")).unwrap_or_default();
    let _ = writeln!(out, "{}", style.paint("1", &format!("{mark} {table}/{} ({what}{about})", chain.chain)));
    let lines = |rules: &[String]| rules.iter().map(|r| format!("-A {} {r}\n", chain.chain)).collect::<String>();
    let (before, after) = (lines(&chain.before), lines(&chain.after));
    let diff = TextDiff::from_lines(&before, &after);
    let mut udiff = diff.unified_diff();
    let live = format!("{table}/{} (live)", chain.chain);
    let planned = format!("{table}/{} (planned)", chain.chain);
    for line in udiff.context_radius(3).header(&live, &planned).to_string().lines() {
        let code = match line.as_bytes().first() {
            _ if line.starts_with("---") || line.starts_with("+++") => "2",
            Some(b'+') => "32",
            Some(b'-') => "31",
            Some(b'@') => "36",
            _ => "",
        };
        let _ = writeln!(out, "{}", if code.is_empty() { line.to_string() } else { style.paint(code, line) });
    }
}

/// `Plan: 3 chains to add, 1 to change; 5 rules to add, 1 to delete.` or `No changes. ...`
pub fn summary_line(s: &Summary) -> String {
    if *s == Summary::default() {
        return "No changes. The live rules match the configuration.".into();
    }
    format!("Plan: {}.", describe(s, ["to add", "to change", "to delete"]))
}

/// `Applied: 1 chain added; 2 rules added, 1 deleted.`
pub fn applied_line(s: &Summary) -> String {
    format!("Applied: {}.", describe(s, ["added", "changed", "deleted"]))
}

fn describe(s: &Summary, [add, change, delete]: [&str; 3]) -> String {
    let chains = counts("chain", [(s.chains_added, add), (s.chains_changed, change), (s.chains_deleted, delete)]);
    let rules = counts("rule", [(s.rules_added, add), (s.rules_changed, change), (s.rules_deleted, delete)]);
    let parts: Vec<String> = [chains, rules].into_iter().flatten().collect();
    parts.join("; ")
}

/// `3 chains to add, 1 to change`: the noun goes with the first count.
fn counts(noun: &str, items: [(usize, &str); 3]) -> Option<String> {
    let mut items = items.into_iter().filter(|(n, _)| *n > 0);
    let (n, verb) = items.next()?;
    let mut text = format!("{n} {noun}{} {verb}", if n == 1 { "" } else { "s" });
    for (n, verb) in items {
        let _ = write!(text, ", {n} {verb}");
    }
    Some(text)
}

/// The plan as structured data: the same content as [`text`].
pub fn json(plan: &Plan) -> serde_json::Value {
    let tables: Vec<serde_json::Value> = plan
        .tables
        .iter()
        .map(|t| {
            let chains: Vec<serde_json::Value> = t
                .chains
                .iter()
                .map(|c| {
                    let mut v = serde_json::to_value(c).unwrap_or_default();
                    v["service"] = c.service().into();
                    v
                })
                .collect();
            serde_json::json!({ "family": t.family, "table": t.table, "chains": chains })
        })
        .collect();
    serde_json::json!({
        "changes": !plan.is_empty(),
        "summary": plan.summary(),
        "tables": tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Op, TablePlan};
    use crate::ruleset::Family;

    fn sample() -> Plan {
        let svc = ChainPlan {
            chain: "IPTPROXY-SVC-A".into(),
            action: Action::Update,
            before: vec![r#"-m comment --comment "web:80/tcp -> 198.19.0.2:80" -j IPTPROXY-SEP-A"#.into()],
            after: vec![
                r#"-m comment --comment "web:80/tcp -> 198.19.0.2:80" -m statistic --mode random --probability 0.50000000000 -j IPTPROXY-SEP-A"#.into(),
                r#"-m comment --comment "web:80/tcp -> 198.19.0.3:80" -j IPTPROXY-SEP-B"#.into(),
            ],
            ops: vec![
                Op::Replace { position: 1, rule: "x".into() },
                Op::Append { rule: "y".into() },
            ],
        };
        let sep = ChainPlan {
            chain: "IPTPROXY-SEP-B".into(),
            action: Action::Create,
            before: vec![],
            after: vec!["-p tcp -j DNAT --to-destination 198.19.0.3:80".into()],
            ops: vec![Op::Append { rule: "z".into() }],
        };
        Plan { tables: vec![TablePlan { family: Family::Ipv4, table: "nat".into(), chains: vec![sep, svc] }] }
    }

    #[test]
    fn reads_like_a_unified_diff_with_a_summary() {
        let out = text(&sample(), Style { color: false });
        assert!(out.starts_with("# IPv4 nat table\n+ nat/IPTPROXY-SEP-B (chain to add)\n"), "{out}");
        assert!(
            out.contains("--- nat/IPTPROXY-SVC-A (live)\n+++ nat/IPTPROXY-SVC-A (planned)\n@@ -1 +1,2 @@\n"),
            "{out}"
        );
        assert!(out.contains("~ nat/IPTPROXY-SVC-A (chain to change, service web:80/tcp)"), "{out}");
        assert!(out.contains("\n+-A IPTPROXY-SEP-B -p tcp -j DNAT --to-destination 198.19.0.3:80\n"), "{out}");
        assert!(out.ends_with("Plan: 1 chain to add, 1 to change; 2 rules to add, 1 to change.\n"), "{out}");
        assert!(!out.contains('\x1b'));
        assert!(text(&sample(), Style { color: true }).contains("\x1b[32m+-A IPTPROXY-SEP-B"));
    }

    #[test]
    fn says_so_when_nothing_changes() {
        assert_eq!(
            text(&Plan::default(), Style { color: false }),
            "No changes. The live rules match the configuration.\n"
        );
    }

    #[test]
    fn summary_counts() {
        let s = Summary { chains_added: 3, rules_added: 5, rules_deleted: 1, ..Summary::default() };
        assert_eq!(summary_line(&s), "Plan: 3 chains to add; 5 rules to add, 1 to delete.");
        let s = Summary { rules_deleted: 1, ..Summary::default() };
        assert_eq!(summary_line(&s), "Plan: 1 rule to delete.");
        let s = Summary { chains_added: 1, chains_deleted: 2, rules_added: 2, ..Summary::default() };
        assert_eq!(applied_line(&s), "Applied: 1 chain added, 2 deleted; 2 rules added.");
    }

    #[test]
    fn json_carries_the_same_plan() {
        let v = json(&sample());
        assert_eq!(v["changes"], true);
        assert_eq!(v["summary"]["rules_added"], 2);
        assert_eq!(v["tables"][0]["family"], "ipv4");
        assert_eq!(v["tables"][0]["chains"][1]["service"], "web:80/tcp");
        assert_eq!(v["tables"][0]["chains"][1]["ops"][1]["op"], "append");
        assert_eq!(v["tables"][0]["chains"][0]["action"], "create");
    }
}
