use proptest::prelude::*;

use super::*;
use crate::config::from_sources;
use crate::edits;
use crate::ruleset::Ruleset;
use crate::testing::{carry_out, config_pair};

proptest! {
    /// Carried out on the rules the old config made, the incremental edits give exactly the
    /// rules the new one makes: what the whole-ruleset plan gives. When they decline, the
    /// change did reach every service or table.
    #[test]
    fn the_incremental_edits_turn_the_old_rules_into_the_new(pair in config_pair()) {
        let (old, new) = (pair.0.config(), pair.1.config());
        let live = render::render(&old).as_live();
        let wanted = render::render(&new).as_live();
        match between(&old, &new) {
            Some(edits) => {
                let plan = edits::to_plan(&edits);
                let after = carry_out(&live, &plan);
                prop_assert_eq!(&after, &carry_out(&live, &plan::plan(&render::render(&new), &live)));
                prop_assert_eq!(sorted(after), sorted(wanted));
            }
            None => prop_assert!(
                !old.settings.same_rules(&new.settings) || render::families(&old) != render::families(&new)
            ),
        }
    }
}

fn sorted(mut r: Ruleset) -> Ruleset {
    r.tables.retain(|t| !t.chains.is_empty());
    r.tables.sort_by(|a, b| (a.family, &a.name).cmp(&(b.family, &b.name)));
    r
}

fn load(files: &[(&str, String)]) -> Config {
    let sources = files.iter().map(|(n, t)| ((*n).into(), t.clone().into_bytes())).collect();
    from_sources(sources).expect("valid")
}

fn many(n: usize, extra: Option<(usize, &str)>) -> Config {
    let mut text = String::new();
    for i in 0..n {
        let mut eps = format!("'198.19.{}.1:80', '198.19.{}.2:80'", i / 250, i / 250);
        if let Some((at, ep)) = extra.filter(|(at, _)| *at == i) {
            let _ = at;
            eps.push_str(&format!(", '{ep}'"));
        }
        text.push_str(&format!(
            "[[service]]\nname='s{i:04}'\nvip='198.18.{}.{}'\nport=80\nendpoints=[{eps}]\nnode_port={}\n",
            i / 250,
            i % 250 + 1,
            30000 + i
        ));
    }
    load(&[("a.toml", text)])
}

#[test]
fn one_new_endpoint_is_its_chain_and_one_rule_of_its_service_chain() {
    let (old, new) = (many(1000, None), many(1000, Some((500, "198.19.99.9:80"))));
    let plan = edits::to_plan(&between(&old, &new).expect("same settings"));
    let s = plan.summary();
    assert_eq!((s.chains_added, s.chains_changed, s.chains_deleted), (1, 1, 0), "{plan:#?}");
    let svc = plan.tables[0].chains.iter().find(|c| c.action == Action::Update).expect("the service chain");
    // The cascade runs from the last endpoint listed: the appended one is one rule at the top.
    assert!(matches!(svc.ops[..], [Op::Insert { position: 1, .. }]), "{:#?}", svc.ops);
}

#[test]
fn a_service_moved_to_another_file_changes_nothing() {
    let a = "[[service]]\nname='a'\nvip='198.18.0.1'\nport=80\nendpoints=['198.19.0.1']\n".to_string();
    let b = "[[service]]\nname='b'\nvip='198.18.0.2'\nport=80\nendpoints=['198.19.0.2']\n".to_string();
    let old = load(&[("1.toml", format!("{a}{b}"))]);
    let new = load(&[("1.toml", b), ("2.toml", format!("\n\n{a}"))]);
    assert!(old.same_rules(&new));
    let edits = between(&old, &new).expect("same settings");
    assert!(edits::to_plan(&edits).is_empty());
}

#[test]
fn a_service_added_in_the_middle_is_spliced_into_the_shared_chains_at_its_place() {
    let (old, mut new) = (many(10, None), many(10, None));
    let mut added = new.services[0].clone();
    added.name = "s0004b".into();
    added.vip = "198.18.9.9".parse().expect("an address");
    added.node_port = Some(31000);
    new.services.insert(5, added);
    let plan = edits::to_plan(&between(&old, &new).expect("same settings"));
    let nat = &plan.tables[0];
    let services = nat.chains.iter().find(|c| c.chain == chains::SERVICES).expect("SERVICES edited");
    assert!(matches!(services.ops[..], [Op::Insert { position: 6, .. }]), "{:#?}", services.ops);
    let node_ports = nat.chains.iter().find(|c| c.chain == chains::NODEPORTS).expect("NODEPORTS edited");
    assert!(matches!(node_ports.ops[..], [Op::Insert { position: 6, .. }]), "{:#?}", node_ports.ops);
}

#[test]
fn a_service_removed_or_moved_leaves_the_shared_chains_by_text_not_by_position() {
    let old = many(10, None);
    let mut new = many(10, None);
    new.services.remove(4);
    new.services[5].vip = "198.18.9.9".parse().expect("an address");
    let plan = edits::to_plan(&between(&old, &new).expect("same settings"));
    let nat = &plan.tables[0];
    let services = nat.chains.iter().find(|c| c.chain == chains::SERVICES).expect("SERVICES edited");
    let positional_deletions = services.ops.iter().filter(|op| matches!(op, Op::Delete { .. } | Op::Replace { .. }));
    assert_eq!(positional_deletions.count(), 0, "{:#?}", services.ops);
    let deleted: Vec<&str> = services
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::DeleteRule { rule } => Some(rule.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted.len(), 2, "{deleted:#?}");
    assert!(deleted[0].contains("s0004:80/tcp") && deleted[1].contains("s0006:80/tcp"), "{deleted:#?}");
    assert!(services.ops.iter().any(|op| matches!(op, Op::Insert { rule, .. } if rule.contains("198.18.9.9"))));
}
