use proptest::prelude::*;

use super::*;
use crate::ruleset::{Chain, Rule};

/// Carries out `ops` on `before` the way iptables does.
fn apply(before: &[String], ops: &[Op]) -> Vec<String> {
    let mut rules = before.to_vec();
    for op in ops {
        match op {
            Op::Append { rule } => rules.push(rule.clone()),
            Op::Insert { position, rule } => {
                assert!(*position >= 1 && *position <= rules.len(), "insert at {position} of {}", rules.len());
                rules.insert(position - 1, rule.clone());
            }
            Op::Replace { position, rule } => rules[position - 1] = rule.clone(),
            Op::Delete { position } => {
                rules.remove(position - 1);
            }
            Op::DeleteRule { rule } => {
                let i = rules.iter().position(|r| r == rule).expect("the rule to delete exists");
                rules.remove(i);
            }
        }
    }
    rules
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn table(chains: &[(&str, &[&str])], hooks: &[(&str, &str, Placement)]) -> Table {
    let mut t = Table::new(Family::Ipv4, "nat");
    for (name, rules) in chains {
        let policy = chains::BUILTIN.contains(name).then(|| "ACCEPT".to_string());
        let rules = rules.iter().map(|r| Rule::new(*r)).collect();
        t.chains.insert(name.to_string(), Chain { policy, rules });
    }
    t.hooks = hooks.iter().map(|(c, s, p)| Hook { chain: c.to_string(), spec: s.to_string(), placement: *p }).collect();
    t
}

fn ruleset(t: Table) -> Ruleset {
    Ruleset { tables: vec![t] }
}

proptest! {
    #[test]
    fn ops_turn_before_into_after(
        before in prop::collection::vec(0u8..6, 0..12),
        after in prop::collection::vec(0u8..6, 0..12),
    ) {
        let name = |v: &Vec<u8>| v.iter().map(|n| format!("-s 198.19.0.{n}/32 -j RETURN")).collect::<Vec<_>>();
        let (before, after) = (name(&before), name(&after));
        let ops = diff_rules(&strs(&before), &strs(&after));
        prop_assert_eq!(apply(&before, &ops), after.clone());
        prop_assert!(ops.len() <= before.len() + after.len());
        if before == after { prop_assert!(ops.is_empty()); }
    }
}

#[test]
fn one_new_rule_is_one_insert() {
    let before: Vec<String> = (0..1000).map(|i| format!("-d 198.18.{}.{}/32 -j X{i}", i / 256, i % 256)).collect();
    let mut after = before.clone();
    after.insert(500, "-d 198.18.9.9/32 -j NEW".into());
    let ops = diff_rules(&strs(&before), &strs(&after));
    assert_eq!(ops, [Op::Insert { position: 501, rule: "-d 198.18.9.9/32 -j NEW".into() }]);
    after.push("-j LAST".into());
    let ops = diff_rules(&strs(&before), &strs(&after));
    assert_eq!(ops.last(), Some(&Op::Append { rule: "-j LAST".into() }));
}

#[test]
fn a_changed_rule_is_replaced_in_place() {
    let ops = diff_rules(&["a", "b", "c"], &["a", "B", "c"]);
    assert_eq!(ops, [Op::Replace { position: 2, rule: "B".into() }]);
}

#[test]
fn quoting_alone_is_no_change() {
    let live = r#"-m comment --comment "shop/dns" -j X"#;
    assert!(diff_rules(&[live], &["-m comment --comment shop/dns -j X"]).is_empty());
}

#[test]
fn creates_updates_and_deletes_chains() {
    let desired = table(&[("IPTPROXY-A", &["-j RETURN"]), ("IPTPROXY-B", &["-s 198.19.0.1/32 -j RETURN"])], &[]);
    let live = table(&[("IPTPROXY-B", &["-s 198.19.0.2/32 -j RETURN"]), ("IPTPROXY-C", &["-j RETURN"])], &[]);
    let p = plan(&ruleset(desired), &ruleset(live));
    let mut actions: Vec<_> = p.tables[0].chains.iter().map(|c| (c.chain.as_str(), c.action.clone())).collect();
    assert_eq!(actions.pop(), Some(("IPTPROXY-C", Action::Delete)), "deletions come last");
    actions.sort_by_key(|a| a.0);
    assert_eq!(actions, [("IPTPROXY-A", Action::Create), ("IPTPROXY-B", Action::Update)]);
    let s = p.summary();
    assert_eq!((s.chains_added, s.chains_changed, s.chains_deleted), (1, 1, 1));
    assert_eq!((s.rules_added, s.rules_changed, s.rules_deleted), (1, 1, 1));
}

#[test]
fn leaves_foreign_chains_alone() {
    let live = table(&[("DOCKER", &["-j RETURN"]), ("KUBE-SERVICES", &["-j KUBE-SVC-X"])], &[]);
    assert!(plan(&Ruleset::default(), &ruleset(live)).is_empty());
}

#[test]
fn orders_chains_before_their_referrers_and_builtins_last() {
    let desired = table(
        &[
            ("IPTPROXY-SERVICES", &["-d 198.18.0.1/32 -j IPTPROXY-SVC-A"]),
            ("IPTPROXY-SVC-A", &["-j IPTPROXY-SEP-A"]),
            (
                "IPTPROXY-SEP-A",
                &["-s 198.19.0.1/32 -j IPTPROXY-MARK-MASQ", "-p tcp -j DNAT --to-destination 198.19.0.1:80"],
            ),
            ("IPTPROXY-MARK-MASQ", &["-j MARK --set-xmark 0x4000/0x4000"]),
        ],
        &[("PREROUTING", "-j IPTPROXY-SERVICES", Placement::First)],
    );
    let live = table(&[("PREROUTING", &[]), ("IPTPROXY-OLD", &[])], &[]);
    let p = plan(&ruleset(desired), &ruleset(live));
    let order: Vec<_> = p.tables[0].chains.iter().map(|c| c.chain.as_str()).collect();
    assert_eq!(
        order,
        ["IPTPROXY-MARK-MASQ", "IPTPROXY-SEP-A", "IPTPROXY-SVC-A", "IPTPROXY-SERVICES", "PREROUTING", "IPTPROXY-OLD"]
    );
}

#[test]
fn hooks_stay_where_they_are_among_foreign_rules() {
    let hook = "-m comment --comment \"iptproxy service portals\" -j IPTPROXY-SERVICES";
    let live = table(
        &[
            ("PREROUTING", &["-m addrtype --dst-type LOCAL -j DOCKER", hook, "-j KUBE-SERVICES"]),
            ("IPTPROXY-SERVICES", &[]),
        ],
        &[],
    );
    let desired = table(&[("IPTPROXY-SERVICES", &[])], &[("PREROUTING", hook, Placement::First)]);
    assert!(plan(&ruleset(desired), &ruleset(live)).is_empty());
}

#[test]
fn missing_hooks_go_to_their_placement_and_stale_ones_leave_by_text() {
    let (a, b, z) = ("-j IPTPROXY-A", "-j IPTPROXY-B", "-j IPTPROXY-Z");
    let old = "-m comment --comment old -j IPTPROXY-OLD";
    let live = table(&[("FORWARD", &["-j DOCKER-USER", old, a, "-j DOCKER-FORWARD", a])], &[]);
    let desired = table(
        &[],
        &[("FORWARD", a, Placement::First), ("FORWARD", b, Placement::First), ("FORWARD", z, Placement::Last)],
    );
    let p = plan(&ruleset(desired), &ruleset(live.clone()));
    let c = &p.tables[0].chains[0];
    assert_eq!(
        c.ops,
        [
            Op::DeleteRule { rule: old.into() },
            Op::DeleteRule { rule: a.into() },
            Op::Insert { position: 1, rule: b.into() },
            Op::Append { rule: z.into() },
        ]
    );
    let before: Vec<String> = live.chains["FORWARD"].specs().map(String::from).collect();
    let after = apply(&before, &c.ops);
    assert_eq!(after, c.after);
    // Foreign rules keep their relative order; exactly one copy of each hook remains.
    assert_eq!(after, [b, "-j DOCKER-USER", "-j DOCKER-FORWARD", a, z]);
}

#[test]
fn cleanup_removes_only_ours() {
    let live = table(
        &[
            ("PREROUTING", &["-j DOCKER", "-j IPTPROXY-SERVICES"]),
            ("IPTPROXY-SERVICES", &["-j IPTPROXY-SVC-A"]),
            ("IPTPROXY-SVC-A", &[]),
            ("DOCKER", &["-j RETURN"]),
        ],
        &[],
    );
    let p = plan(&Ruleset::default(), &ruleset(live));
    let t = &p.tables[0];
    let pre = t.chains.iter().find(|c| c.chain == "PREROUTING").unwrap();
    assert_eq!(pre.ops, [Op::DeleteRule { rule: "-j IPTPROXY-SERVICES".into() }]);
    let deleted: Vec<_> = t.chains.iter().filter(|c| c.action == Action::Delete).map(|c| c.chain.as_str()).collect();
    assert_eq!(deleted, ["IPTPROXY-SERVICES", "IPTPROXY-SVC-A"]);
}

#[test]
fn finds_jump_targets_of_rendered_rules() {
    assert_eq!(jump_target("-m comment --comment \"a -> b\" -j IPTPROXY-SEP-X"), Some("IPTPROXY-SEP-X"));
    assert_eq!(jump_target("-j MARK --set-xmark 0x4000/0x4000"), Some("MARK"));
    assert_eq!(jump_target("-g IPTPROXY-X"), Some("IPTPROXY-X"));
    assert_eq!(jump_target("-s 198.19.0.1/32"), None);
}

#[test]
fn a_rendered_ruleset_as_live_needs_no_change() {
    let toml = "[settings]\ncluster_cidrs=['198.19.0.0/16']\n[[service]]\nname='a'\nvip='198.18.0.1'\nport=80\n\
                endpoints=['198.19.0.1','198.19.0.2']\nnode_port=30080\n";
    let config = crate::config::from_sources(vec![("a.toml".into(), toml.as_bytes().to_vec())]).unwrap();
    let desired = crate::render::render(&config);
    assert!(plan(&desired, &desired.as_live()).is_empty());
    let forward = desired.as_live();
    let filter = forward.table(Family::Ipv4, "filter").unwrap();
    let specs: Vec<&str> = filter.chains["FORWARD"].specs().collect();
    assert!(specs.last().unwrap().ends_with("-j IPTPROXY-FORWARD"), "appended hooks come last: {specs:#?}");
}

#[test]
fn chains_of_one_depth_are_not_created_in_name_order() {
    // iptables-nft-save reads back chains created in name order in quadratic time.
    let names: Vec<String> = (0..100).map(|i| format!("IPTPROXY-SEP-{i:03}")).collect();
    let chains: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &["-j RETURN"][..])).collect();
    let p = plan(&ruleset(table(&chains, &[])), &Ruleset::default());
    let order: Vec<&str> = p.tables[0].chains.iter().map(|c| c.chain.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, names, "every chain is created");
    assert_ne!(order, sorted);
    sorted.reverse();
    assert_ne!(order, sorted);
    assert_eq!(
        order,
        plan(&ruleset(table(&chains, &[])), &Ruleset::default()).tables[0]
            .chains
            .iter()
            .map(|c| c.chain.as_str())
            .collect::<Vec<_>>(),
        "and the order is the same every time"
    );
}
