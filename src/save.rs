//! A parser for `iptables-save` output, fed one line at a time so that a large ruleset can
//! be read as it streams from the process.
//!
//! It reads every table, chain and rule, with or without `-c` counters; skips comments;
//! keeps `# Warning:` lines for the log; refuses a table the tool says is incompatible
//! (its rules are hidden from us, so planning against it would be blind). It never panics.

use crate::ruleset::{Chain, Counters, Family, Rule, Table};
use crate::spec;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaveError {
    #[error("{tool}-save output, line {line}: {message}: {text:?}")]
    Syntax { tool: &'static str, line: usize, message: &'static str, text: String },
    #[error(
        "{tool}-save cannot show table {table}: it holds rules written by another tool (nft); \
         iptproxy will not manage a table it cannot read"
    )]
    Incompatible { tool: &'static str, table: String },
    #[error("{tool}-save output ended inside table {table} (no COMMIT)")]
    Truncated { tool: &'static str, table: String },
}

/// Parses a whole `iptables-save` output.
pub fn parse(family: Family, text: &str) -> Result<Vec<Table>, SaveError> {
    let mut parser = Parser::new(family);
    for line in text.lines() {
        parser.line(line)?;
    }
    parser.finish()
}

/// What one line of `iptables-save` output says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// Blank, or a comment.
    Nothing,
    /// `# Warning: ...`, for the log.
    Warning(&'a str),
    /// `*table`: a table starts.
    Table(&'a str),
    /// `:NAME POLICY [packets:bytes]`; the policy is `None` for a user-defined chain.
    Chain { name: &'a str, policy: Option<&'a str> },
    /// `[packets:bytes] -A CHAIN spec...`, counters only with `-c`.
    Rule { chain: &'a str, spec: &'a str, counters: Option<Counters> },
    /// `COMMIT`: the table ends.
    Commit,
}

/// Reads `iptables-save` output a line at a time: what each line is, and whether it may
/// come where it does (tables do not nest; chains and rules are inside one).
pub struct Lexer {
    family: Family,
    line: usize,
    table: Option<String>,
}

impl Lexer {
    pub fn new(family: Family) -> Lexer {
        Lexer { family, line: 0, table: None }
    }

    fn tool(&self) -> &'static str {
        self.family.tool()
    }

    fn syntax(&self, message: &'static str, text: &str) -> SaveError {
        let text = text.chars().take(200).collect();
        SaveError::Syntax { tool: self.tool(), line: self.line, message, text }
    }

    /// An error about the line just read, for checks the caller makes.
    pub fn error(&self, message: &'static str, text: &str) -> SaveError {
        self.syntax(message, text)
    }

    pub fn next<'a>(&mut self, raw: &'a str) -> Result<Line<'a>, SaveError> {
        self.line += 1;
        let text = raw.trim_end_matches(['\r', '\n']);
        if text.trim().is_empty() {
            return Ok(Line::Nothing);
        }
        if let Some(comment) = text.strip_prefix('#') {
            let comment = comment.trim();
            if let Some(rest) = comment.strip_prefix("Table `") {
                if rest.contains("incompatible") {
                    let table = rest.split('\'').next().unwrap_or(rest).to_string();
                    return Err(SaveError::Incompatible { tool: self.tool(), table });
                }
            }
            return Ok(if comment.starts_with("Warning") { Line::Warning(comment) } else { Line::Nothing });
        }
        if let Some(name) = text.strip_prefix('*') {
            if self.table.is_some() {
                return Err(self.syntax("a table starts before the previous one's COMMIT", text));
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(self.syntax("bad table name", text));
            }
            self.table = Some(name.to_string());
            return Ok(Line::Table(name));
        }
        if text == "COMMIT" {
            self.table.take().ok_or_else(|| self.syntax("COMMIT outside a table", text))?;
            return Ok(Line::Commit);
        }
        if let Some(decl) = text.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
                return Err(self.syntax("a chain needs a name and a policy", text));
            };
            if self.table.is_none() {
                return Err(self.syntax("a chain outside a table", text));
            }
            return Ok(Line::Chain { name, policy: (policy != "-").then_some(policy) });
        }
        self.rule(text)
    }

    fn rule<'a>(&self, text: &'a str) -> Result<Line<'a>, SaveError> {
        let (counters, rest) = match text.strip_prefix('[') {
            Some(after) => {
                let (inner, rest) = after.split_once(']').ok_or_else(|| self.syntax("unclosed counters", text))?;
                (Some(parse_counters(inner).ok_or_else(|| self.syntax("bad counters", text))?), rest.trim_start())
            }
            None => (None, text),
        };
        let Some(rest) = rest.strip_prefix("-A ") else {
            return Err(self.syntax("expected a rule (-A), a chain (:), a table (*) or COMMIT", text));
        };
        let rest = rest.trim_start();
        let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
        if chain.is_empty() {
            return Err(self.syntax("a rule without a chain", text));
        }
        let spec = spec.trim();
        if !spec::quotes_closed(spec) {
            return Err(self.syntax("unterminated quote", text));
        }
        if self.table.is_none() {
            return Err(self.syntax("a rule outside a table", text));
        }
        Ok(Line::Rule { chain, spec, counters })
    }

    /// The end of the output: an error if it ended inside a table.
    pub fn finish(&self) -> Result<(), SaveError> {
        match &self.table {
            Some(table) => Err(SaveError::Truncated { tool: self.tool(), table: table.clone() }),
            None => Ok(()),
        }
    }
}

/// Builds the tables of `iptables-save` output, fed a line at a time.
pub struct Parser {
    lexer: Lexer,
    current: Option<Table>,
    tables: Vec<Table>,
    /// `# Warning: ...` lines the tool printed, for the log.
    pub warnings: Vec<String>,
}

impl Parser {
    pub fn new(family: Family) -> Parser {
        Parser { lexer: Lexer::new(family), current: None, tables: Vec::new(), warnings: Vec::new() }
    }

    pub fn line(&mut self, raw: &str) -> Result<(), SaveError> {
        match self.lexer.next(raw)? {
            Line::Nothing => {}
            Line::Warning(w) => self.warnings.push(w.to_string()),
            Line::Table(name) => self.current = Some(Table::new(self.lexer.family, name)),
            Line::Commit => self.tables.extend(self.current.take()),
            Line::Chain { name, policy } => {
                if let Some(table) = self.current.as_mut() {
                    table.chains.entry(name.to_string()).or_default().policy = policy.map(str::to_string);
                }
            }
            Line::Rule { chain, spec, counters } => {
                let Some(table) = self.current.as_mut() else { return Ok(()) };
                let rule = Rule { spec: spec.to_string(), counters };
                // Looked up by `&str` first: a chain name is allocated once, not once per rule.
                match table.chains.get_mut(chain) {
                    Some(c) => c.rules.push(rule),
                    // iptables-save declares every chain first; a rule of an undeclared one
                    // still belongs to it.
                    None => {
                        table.chains.insert(chain.to_string(), Chain::user(vec![rule]));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Vec<Table>, SaveError> {
        self.lexer.finish()?;
        Ok(self.tables)
    }
}

fn parse_counters(inner: &str) -> Option<Counters> {
    let (p, b) = inner.split_once(':')?;
    Some(Counters { packets: p.parse().ok()?, bytes: b.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 10:16:44 2026
*nat
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:IPTPROXY-SERVICES - [0:0]
[5:300] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
[7:420] -A PREROUTING -m comment --comment "iptproxy service portals" -j IPTPROXY-SERVICES
-A PREROUTING
[0:0] -A DOCKER -i docker0 -j RETURN
-A DOCKER ! -s 198.18.0.0/15 -m set --match-set allow src -j RETURN
COMMIT
# Completed on Sun Nov 22 10:16:44 2026
# Warning: iptables-legacy tables present, use iptables-legacy-save to see them
*filter
:INPUT DROP [0:0]
COMMIT
"#;

    #[test]
    fn reads_tables_chains_rules_and_counters() {
        let mut p = Parser::new(Family::Ipv4);
        for line in SAMPLE.lines() {
            p.line(line).unwrap();
        }
        assert_eq!(p.warnings.len(), 1);
        let tables = p.finish().unwrap();
        assert_eq!(tables.len(), 2);
        let nat = &tables[0];
        assert_eq!(nat.name, "nat");
        assert_eq!(nat.chains.len(), 6);
        let pre = &nat.chains["PREROUTING"];
        assert_eq!(pre.policy.as_deref(), Some("ACCEPT"));
        assert_eq!(pre.rules.len(), 3);
        assert_eq!(pre.rules[1].spec, r#"-m comment --comment "iptproxy service portals" -j IPTPROXY-SERVICES"#);
        assert_eq!(pre.rules[1].counters, Some(Counters { packets: 7, bytes: 420 }));
        assert_eq!(pre.rules[2].spec, "", "an empty rule matches everything and is kept");
        assert_eq!(nat.chains["DOCKER"].rules[1].spec, "! -s 198.18.0.0/15 -m set --match-set allow src -j RETURN");
        assert!(nat.chains["IPTPROXY-SERVICES"].rules.is_empty());
        assert_eq!(tables[1].chains["INPUT"].policy.as_deref(), Some("DROP"));
    }

    #[test]
    fn refuses_incompatible_tables() {
        let text = "# Table `nat' is incompatible, use 'nft' tool.\n";
        assert_eq!(parse(Family::Ipv4, text), Err(SaveError::Incompatible { tool: "iptables", table: "nat".into() }));
    }

    #[test]
    fn reports_bad_lines_with_their_number() {
        for (text, message) in [
            ("*nat\ngarbage\nCOMMIT\n", "expected a rule"),
            ("-A X -j Y\n", "a rule outside a table"),
            ("*nat\n*filter\n", "a table starts"),
            ("COMMIT\n", "COMMIT outside"),
            ("*nat\n[1:x] -A X\nCOMMIT\n", "bad counters"),
            ("*nat\n-A X -m comment --comment \"open\nCOMMIT\n", "unterminated quote"),
            ("*nat\n:X\nCOMMIT\n", "a chain needs"),
        ] {
            match parse(Family::Ipv4, text) {
                Err(SaveError::Syntax { message: m, line, .. }) => {
                    assert!(m.contains(message), "{text:?}: {m}");
                    assert!(line >= 1);
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(parse(Family::Ipv6, "*nat\n"), Err(SaveError::Truncated { tool: "ip6tables", .. })));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in ["[", "[]", "[:]", "[1:2]", "[1:2] -A", "-A ", ":", "*", "#", "\u{0}", "*nat\n-A  \nCOMMIT", "é*"]
        {
            let _ = parse(Family::Ipv4, text);
        }
    }
}
