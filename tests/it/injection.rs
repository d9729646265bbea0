//! No string can inject a rule. Two layers, each proven on its own with generated input:
//!
//! - the script writer: whatever chain names and rule texts a plan holds, the input it
//!   writes either is refused or has exactly one line per edit, and each line splits (the
//!   way iptables-restore splits it) into exactly the arguments the edit meant;
//! - the config: whatever string goes into whatever field, the config is refused, or every
//!   argument of every line comes from the expected grammar, and the number of lines and
//!   arguments is the same as with plain service names.

use std::sync::LazyLock;

use iptproxy::config::{self, Config};
use iptproxy::plan::{self, Action, ChainPlan, Op, Plan, TablePlan};
use iptproxy::restore::{self, Script};
use iptproxy::ruleset::{Family, Ruleset};
use iptproxy::{render, spec};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use regex_lite::Regex;

/// How iptables-restore turns a line into arguments: a port of libxtables'
/// `add_param_to_argv`, written from its source so that the writer is checked against the
/// tool and not against our own `spec::split`. `None` when the tool would refuse the line.
fn tool_split(line: &str) -> Option<Vec<Vec<u8>>> {
    let (mut args, mut param) = (Vec::new(), Vec::new());
    let (mut quote_open, mut escaped) = (false, false);
    // fgets stops at a newline, and C strings at a NUL.
    let bytes = line.as_bytes().split(|&b| b == 0).next()?;
    for &c in bytes {
        if quote_open {
            if escaped {
                param.push(c);
                escaped = false;
                continue;
            } else if c == b'\\' {
                escaped = true;
                continue;
            } else if c == b'"' {
                quote_open = false;
            } else {
                param.push(c);
                continue;
            }
        } else if c == b'"' {
            quote_open = true;
            continue;
        }
        match c {
            b'"' => {}
            b' ' | b'\t' | b'\n' => {
                if param.is_empty() {
                    continue;
                }
            }
            _ => {
                param.push(c);
                if param.len() >= 1024 {
                    return None;
                }
                continue;
            }
        }
        args.push(std::mem::take(&mut param));
    }
    if quote_open {
        return None;
    }
    if !param.is_empty() {
        args.push(param);
    }
    Some(args)
}

fn bytes(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// Strings meant to break out: line ends, quotes, commands, NUL, non-ASCII, long runs.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_string()),
        Just("\r".to_string()),
        Just("\0".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("'".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("-A".to_string()),
        Just("-D X 1".to_string()),
        Just("--app".to_string()),
        Just("COMMIT".to_string()),
        Just("*nat".to_string()),
        Just(":X - [0:0]".to_string()),
        Just("#".to_string()),
        Just("é".to_string()),
        Just("\u{202e}".to_string()),
        Just("--comment".to_string()),
        Just("-j ACCEPT".to_string()),
        "[a-z0-9./:-]{0,8}",
        "a{300,1100}",
    ];
    prop_oneof![
        4 => prop::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
}

/// Text the writer must accept: printable, no quotes, no commands.
fn plain() -> impl Strategy<Value = String> {
    "(-[dgijmops] [a-zA-Z0-9./:]{1,12} ){0,6}-j [A-Z]{1,8}"
}

fn chain_name() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        3 => "IPTPROXY-[A-Z0-9]{1,19}".prop_map(|n| (n, true)),
        1 => hostile().prop_map(|n| (n, false)),
    ]
}

fn rule() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![3 => plain().prop_map(|r| (r, true)), 1 => hostile().prop_map(|r| (r, false))]
}

fn op() -> impl Strategy<Value = (Op, bool)> {
    (0..5u8, 1..50usize, rule()).prop_map(|(kind, position, (rule, safe))| match kind {
        0 => (Op::Append { rule }, safe),
        1 => (Op::Insert { position, rule }, safe),
        2 => (Op::Replace { position, rule }, safe),
        3 => (Op::Delete { position }, true),
        _ => (Op::DeleteRule { rule }, safe),
    })
}

fn chain_plan() -> impl Strategy<Value = (ChainPlan, bool)> {
    (chain_name(), 0..3u8, prop::collection::vec(op(), 0..6)).prop_map(|((chain, safe_name), action, ops)| {
        let action = [Action::Create, Action::Update, Action::Delete][action as usize].clone();
        let ops: Vec<(Op, bool)> = if action == Action::Delete { Vec::new() } else { ops };
        let safe = safe_name && ops.iter().all(|(_, s)| *s);
        let ops = ops.into_iter().map(|(op, _)| op).collect();
        (ChainPlan { chain, action, before: Vec::new(), after: Vec::new(), ops }, safe)
    })
}

fn any_plan() -> impl Strategy<Value = (Plan, bool)> {
    let table = prop_oneof![3 => Just(("nat".to_string(), true)), 1 => hostile().prop_map(|t| (t, false))];
    prop::collection::vec((table, any::<bool>(), prop::collection::vec(chain_plan(), 1..5)), 1..3).prop_map(|tables| {
        let mut all_safe = true;
        let tables = tables
            .into_iter()
            .map(|((table, safe_table), v6, chains)| {
                all_safe &= safe_table && chains.iter().all(|(_, s)| *s);
                let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
                TablePlan { family, table, chains: chains.into_iter().map(|(c, _)| c).collect() }
            })
            .collect();
        (Plan { tables }, all_safe)
    })
}

/// The arguments each edit of `plan` means, in the order the writer puts them.
fn intended_lines(plan: &Plan) -> Vec<Vec<Vec<u8>>> {
    let mut lines = Vec::new();
    for t in &plan.tables {
        let (deleted, edited): (Vec<_>, Vec<_>) = t.chains.iter().partition(|c| c.action == Action::Delete);
        for c in edited {
            let name = c.chain.as_str();
            if c.action == Action::Create {
                lines.push(bytes(&[&format!(":{name}"), "-", "[0:0]"]));
            }
            for op in &c.ops {
                let (head, rule) = match op {
                    Op::Append { rule } => (vec!["-A".to_string(), name.to_string()], Some(rule)),
                    Op::Insert { position, rule } => (vec!["-I".into(), name.into(), position.to_string()], Some(rule)),
                    Op::Replace { position, rule } => {
                        (vec!["-R".into(), name.into(), position.to_string()], Some(rule))
                    }
                    Op::Delete { position } => (vec!["-D".into(), name.into(), position.to_string()], None),
                    Op::DeleteRule { rule } => (vec!["-D".into(), name.into()], Some(rule)),
                };
                let mut args: Vec<Vec<u8>> = head.into_iter().map(String::into_bytes).collect();
                if let Some(rule) = rule {
                    args.extend(
                        spec::split(rule).expect("an accepted rule splits").into_iter().map(String::into_bytes),
                    );
                }
                lines.push(args);
            }
        }
        for flag in ["-F", "-X"] {
            for c in &deleted {
                lines.push(bytes(&[flag, &c.chain]));
            }
        }
    }
    lines
}

/// What the tool would read from `scripts`: the argument lists of every line that is not
/// a table header or COMMIT, after checking that those frame each block.
fn as_the_tool_reads(scripts: &[Script]) -> Vec<Vec<Vec<u8>>> {
    let mut lines = Vec::new();
    for s in scripts {
        assert!(s.text.ends_with("COMMIT\n"), "{:?}", s.text);
        assert!(s.text.bytes().all(|b| b == b'\n' || (b' '..=b'~').contains(&b)), "{:?}", s.text);
        let body: Vec<&str> = s.text.lines().collect();
        assert_eq!(body.first().copied(), Some(format!("*{}", s.table).as_str()));
        assert_eq!(body.iter().filter(|l| **l == "COMMIT" || l.starts_with('*')).count(), 2, "{:?}", s.text);
        for line in &body[1..body.len() - 1] {
            let args = if line.starts_with(':') {
                // Chain declarations are read by strtok on blanks.
                line.split([' ', '\t']).filter(|a| !a.is_empty()).map(|a| a.as_bytes().to_vec()).collect()
            } else {
                tool_split(line).unwrap_or_else(|| panic!("the tool would refuse {line:?}"))
            };
            lines.push(args);
        }
    }
    lines
}

/// The commands in order, and the chain declarations as a set: a transaction declares the
/// chains it creates at its top (restore's unit tests check they precede their rules).
#[allow(clippy::type_complexity)]
fn commands_and_declarations(lines: Vec<Vec<Vec<u8>>>) -> (Vec<Vec<Vec<u8>>>, Vec<Vec<Vec<u8>>>) {
    let (mut declarations, commands): (Vec<_>, Vec<_>) =
        lines.into_iter().partition(|l| l.first().is_some_and(|a| a.starts_with(b":")));
    declarations.sort();
    (commands, declarations)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_writer_never_lets_a_string_add_a_line_an_argument_or_a_command(
        (plan, safe) in any_plan(),
        max_lines in 2..40usize,
    ) {
        match restore::scripts(&plan, max_lines) {
            Ok(scripts) => prop_assert_eq!(commands_and_declarations(as_the_tool_reads(&scripts)), commands_and_declarations(intended_lines(&plan))),
            Err(e) => {
                prop_assert!(!safe, "a plan of plain names and rules was refused: {}", e);
                prop_assert!(e.to_string().contains("nothing was changed"));
            }
        }
    }
}

/// The config's fields with valid values; [`hostile_config`] replaces some of them.
const FIELDS: [(&str, &str); 19] = [
    ("cidr", "\"198.19.0.0/16\""),
    ("mbit", "14"),
    ("dbit", "15"),
    ("wait", "\"5s\""),
    ("name", "\"shop/web\""),
    ("proto", "\"tcp\""),
    ("vip", "\"198.18.0.10\""),
    ("port", "80"),
    ("ep1", "\"198.19.0.2:8080\""),
    ("ep2", "\"198.19.0.3\""),
    ("ep_port", "8080"),
    ("weight", "3"),
    ("np", "30080"),
    ("ext", "\"198.18.1.1\""),
    ("src", "\"198.18.2.0/24\""),
    ("aff", "\"client-ip\""),
    ("timeout", "\"1h\""),
    ("masq", "\"auto\""),
    ("svc_port", "81"),
];

const TEMPLATE: &str = "[settings]\ncluster_cidrs = [{cidr}]\nmasquerade_bit = {mbit}\ndrop_bit = {dbit}\n\
    lock_wait = {wait}\n\n[[service]]\nname = {name}\nprotocol = {proto}\nvip = {vip}\nport = {port}\n\
    endpoints = [{ep1}, { address = {ep2}, port = {ep_port}, weight = {weight} }]\nnode_port = {np}\n\
    external_ips = [{ext}]\nsource_ranges = [{src}]\nsession_affinity = {aff}\naffinity_timeout = {timeout}\n\
    masquerade = {masq}\n\n[[service]]\nname = \"other\"\nvip = \"198.18.0.11\"\nport = {svc_port}\n\
    endpoints = [{ep1}]\n";

/// A value for a field: a hostile string (escaped as a TOML string, or pasted in raw) or
/// a value of another type.
fn bad_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => hostile().prop_map(|s| toml::Value::String(s).to_string()),
        2 => hostile().prop_map(|s| format!("\"{s}\"")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec!["0", "65536", "-1", "1979-05-27T07:32:00Z", "[]", "{}", "true", "1.5", "\"\""])
            .prop_map(str::to_string),
    ]
}

/// The template with up to three fields replaced by bad values.
fn hostile_config() -> impl Strategy<Value = String> {
    prop::collection::vec((0..FIELDS.len(), bad_value()), 0..4).prop_map(|bad| {
        let mut text = TEMPLATE.to_string();
        for (i, (key, valid)) in FIELDS.iter().enumerate() {
            let value = bad.iter().find(|(j, _)| *j == i).map_or(*valid, |(_, v)| v.as_str());
            text = text.replace(&format!("{{{key}}}"), value);
        }
        text
    })
}

/// Every argument iptproxy's rules may hold, outside comments.
static WORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(!|--?[a-z][a-z0-9-]*|[A-Z][A-Z-]*|[a-z][a-z0-9-]*|[0-9]+(\.[0-9]+)?|0x[0-9a-f]+(/0x[0-9a-f]+)?|\[?[0-9a-f.:]+\]?(:[0-9]+)?(/[0-9]+)?|IPTPROXY-[A-Z0-9-]+|[A-Z]+,[A-Z]+)$",
    )
    .unwrap()
});
/// What a comment may say: about iptproxy, or about one service (`name:port/proto ...`).
static COMMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(iptproxy[a-zA-Z ;:_-]*|masquerade traffic from outside cluster_cidrs|[a-z0-9][a-z0-9._/-]{0,62}:[0-9]{1,5}/(tcp|udp|sctp)( [a-zA-Z ]+| -> \[?[0-9a-f.:]+\]?:[0-9]+)?)$",
    )
    .unwrap()
});
static CHAIN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(IPTPROXY-[A-Z0-9-]{1,19}|PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING)$").unwrap());

/// The shape of each line: (number of lines, sorted argument counts).
fn shape(scripts: &[Script]) -> (usize, Vec<usize>) {
    let lines = as_the_tool_reads(scripts);
    let mut counts: Vec<usize> = lines.iter().map(Vec::len).collect();
    counts.sort_unstable();
    (lines.len(), counts)
}

fn scripts_for(config: &Config) -> Vec<Script> {
    let desired = render::render(config);
    let plan = plan::plan(&desired, &Ruleset::default());
    restore::scripts(&plan, restore::DEFAULT_MAX_LINES).expect("the writer accepts every valid config")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_config_string_reaches_the_rules_outside_its_grammar(text in hostile_config()) {
        let Ok(config) = config::from_sources(vec![("hostile.toml".into(), text.clone().into_bytes())]) else {
            return Ok(());
        };
        let scripts = scripts_for(&config);
        for line in as_the_tool_reads(&scripts) {
            let args: Vec<String> = line.iter().map(|a| String::from_utf8(a.clone()).unwrap()).collect();
            if let Some(chain) = args[0].strip_prefix(':') {
                prop_assert!(CHAIN.is_match(chain) && args[1..] == ["-", "[0:0]"], "{:?}\nfrom\n{}", args, text);
                continue;
            }
            prop_assert!(CHAIN.is_match(&args[1]), "chain {:?} in {:?}\nfrom\n{}", args[1], args, text);
            for (i, arg) in args.iter().enumerate().skip(1) {
                let ok = if args[i - 1] == "--comment" { COMMENT.is_match(arg) } else { WORD.is_match(arg) };
                prop_assert!(ok, "argument {:?} in {:?}\nfrom\n{}", arg, args, text);
            }
        }
        // The same config with plain names writes as many lines and arguments.
        let mut plain = config.clone();
        for (i, s) in plain.services.iter_mut().enumerate() {
            s.name = format!("s{i}");
        }
        prop_assert_eq!(shape(&scripts), shape(&scripts_for(&plain)), "from\n{}", text);
    }
}

#[test]
fn the_generated_configs_are_sometimes_valid() {
    // Guards the property above against a generator whose every config is refused.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = hostile_config();
    let valid = (0..300)
        .filter(|_| {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            config::from_sources(vec![("a.toml".into(), text.into_bytes())]).is_ok()
        })
        .count();
    assert!(valid >= 10, "only {valid} of 300 generated configs were valid");
}

#[test]
fn the_tool_split_port_reads_the_tricky_cases_as_the_tool_does() {
    // Each was fed to iptables-restore (nft and legacy) when this port was written.
    assert_eq!(
        tool_split(r#"-A Y --comment a"b c" -j ACCEPT"#),
        Some(bytes(&["-A", "Y", "--comment", "ab c", "-j", "ACCEPT"]))
    );
    assert_eq!(tool_split(r#"--comment "a"b"#), Some(bytes(&["--comment", "a", "b"])));
    assert_eq!(tool_split(r#"--comment """#), Some(bytes(&["--comment", ""])));
    assert_eq!(tool_split(r#"--comment "it\'s \"q\"""#), Some(bytes(&["--comment", "it's \"q\""])));
    assert_eq!(tool_split(r#"--comment "open"#), None);
}

/// The real iptables-restore reads what the writer wrote as the writer meant it: every
/// awkward comment arrives whole, as one argument, one rule per line.
#[test]
fn the_real_tool_reads_awkward_strings_as_one_argument_each() {
    use iptproxy::backend::Backend;
    use iptproxy::exec::{Runner, System};

    let comments =
        ["it's", "a \"b\"", "back\\slash", "", "-A", "--append X", "COMMIT", "*nat", "x -j ACCEPT", "#", ":X - [0:0]"];
    let rules: Vec<String> =
        comments.iter().map(|c| format!("-m comment --comment {} -j RETURN", spec::quote(c))).collect();
    let chain = ChainPlan {
        chain: "IPTPROXY-QUOTES".into(),
        action: Action::Create,
        before: Vec::new(),
        after: Vec::new(),
        ops: rules.iter().map(|r| Op::Append { rule: r.clone() }).collect(),
    };
    let plan = Plan { tables: vec![TablePlan { family: Family::Ipv4, table: "filter".into(), chains: vec![chain] }] };
    let scripts = restore::scripts(&plan, restore::DEFAULT_MAX_LINES).unwrap();
    for backend in [Backend::Nft, Backend::Legacy] {
        let ns = crate::harness::Netns::new();
        let live = ns.enter(|| {
            let runner = System::new(backend, 5);
            for s in &scripts {
                runner.restore(s.family, &s.text).unwrap();
            }
            runner.list_chain(Family::Ipv4, "filter", "IPTPROXY-QUOTES").unwrap().expect("the chain exists")
        });
        let read: Vec<String> = live.iter().map(|r| spec::comment(r).unwrap_or_else(|| panic!("{r}"))).collect();
        assert_eq!(read, comments, "{backend}");
    }
}
