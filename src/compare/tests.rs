use proptest::prelude::*;

use super::*;
use crate::edits;
use crate::plan::Plan;
use crate::ruleset::{Chain, Rule, Ruleset};
use crate::testing::{carry_out, config_pair, config_spec, ours, save_text};

/// What comparing `live` (as iptables-save prints it) with `config` plans.
fn compared(config: &Config, live: &Ruleset) -> Result<Plan, SaveError> {
    let mut edits = Vec::new();
    for family in Family::ALL {
        let mut c = Comparer::new(config, family);
        for line in save_text(live, family).lines() {
            c.line(line)?;
        }
        edits.extend(c.finish()?);
    }
    Ok(edits::to_plan(&edits))
}

/// Damage of the kinds the kernel sees: rules deleted or a chain flushed by hand, a chain of
/// ours that should not be there, another program's chains and rules.
fn damage(live: &mut Ruleset, how: &[(u8, u16, u16)]) {
    for (kind, a, b) in how {
        let Some(t) = (!live.tables.is_empty()).then(|| *a as usize % live.tables.len()) else { return };
        let table = &mut live.tables[t];
        let names: Vec<String> = table.chains.keys().cloned().collect();
        let Some(name) = (!names.is_empty()).then(|| names[*b as usize % names.len()].clone()) else { continue };
        let chain = table.chains.get_mut(&name).expect("listed");
        match kind % 4 {
            0 if !chain.rules.is_empty() => {
                let i = *a as usize % chain.rules.len();
                chain.rules.remove(i);
            }
            1 => chain.rules.clear(),
            2 => {
                let stray = Chain::user(vec![Rule::new("-s 198.19.9.9/32 -j RETURN")]);
                table.chains.insert("IPTPROXY-SEP-AAAAAAAAAAAAAAA".into(), stray);
                table.chains.insert("IPTPROXY-OLD".into(), Chain::default());
            }
            _ => {
                table.chains.insert("DOCKER".into(), Chain::user(vec![Rule::new("-i docker0 -j RETURN")]));
                let pre = Chain { policy: Some("ACCEPT".into()), rules: Vec::new() };
                let pre = table.chains.entry("PREROUTING".into()).or_insert(pre);
                pre.rules.insert(0, Rule::new("-m addrtype --dst-type LOCAL -j DOCKER"));
            }
        }
    }
}

/// Another program's part of a ruleset: what must come through untouched.
fn foreign(live: &Ruleset) -> Vec<(Family, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for t in &live.tables {
        for (name, c) in t.chains.iter().filter(|(n, _)| !crate::chains::is_ours(n)) {
            let rules: Vec<String> = c
                .specs()
                .filter(|r| !crate::spec::target(r).is_some_and(|t| crate::chains::is_ours(&t)))
                .map(String::from)
                .collect();
            out.push((t.family, t.name.clone(), name.clone(), rules));
        }
    }
    out.retain(|(_, _, _, rules)| !rules.is_empty());
    out.sort();
    out
}

proptest! {
    /// Compared while it streams, the live ruleset (whatever was done to it) plans exactly
    /// what makes our part of it what the config renders, and leaves the rest alone.
    #[test]
    fn the_streamed_comparison_plans_what_makes_the_rules_the_configs(
        (old, new) in config_pair(),
        how in prop::collection::vec((0u8..4, any::<u16>(), any::<u16>()), 0..4),
    ) {
        let (old, new) = (old.config(), new.config());
        let mut live = render::render(&old).as_live();
        damage(&mut live, &how);
        let plan = compared(&new, &live).expect("well-formed save output");
        let after = carry_out(&live, &plan);
        prop_assert_eq!(ours(&after), ours(&render::render(&new).as_live()));
        prop_assert_eq!(foreign(&after), foreign(&live));
        // Exactly what the whole-ruleset planner makes of it, with the same changes.
        let whole = plan::plan(&render::render(&new), &live);
        prop_assert_eq!(&after, &carry_out(&live, &whole));
        prop_assert_eq!(plan.summary(), whole.summary());
        prop_assert!(compared(&new, &after).expect("well-formed").is_empty(), "planning again finds nothing");
    }

    #[test]
    fn a_first_sync_creates_everything_and_holds_none_of_it(spec in config_spec()) {
        let config = spec.config();
        let mut edits = Vec::new();
        for family in Family::ALL {
            edits.extend(Comparer::new(&config, family).finish().expect("no output is fine"));
        }
        for t in &edits {
            if let Services::Live(m) = &t.services {
                prop_assert_eq!(m.updates().count(), 0, "nothing is held for a missing chain");
            }
        }
        let plan = edits::to_plan(&edits);
        prop_assert_eq!(ours(&carry_out(&Ruleset::default(), &plan)), ours(&render::render(&config).as_live()));
    }
}

fn web() -> Config {
    let toml = "[[service]]\nname='web'\nvip='198.18.0.10'\nport=80\nendpoints=['198.19.0.2:8080','198.19.0.3:8080']\n";
    crate::config::from_sources(vec![("a.toml".into(), toml.as_bytes().to_vec())]).expect("valid")
}

#[test]
fn a_chain_whose_rules_are_not_together_is_an_error_not_a_wrong_plan() {
    let config = web();
    let live = render::render(&config).as_live();
    let text = save_text(&live, Family::Ipv4);
    let lines: Vec<&str> = text.lines().collect();
    let sep = lines.iter().position(|l| l.starts_with("-A IPTPROXY-SEP-")).expect("an endpoint chain");
    // Its second rule moved after the next chain's rules.
    let mut shuffled: Vec<&str> = lines.clone();
    let second = shuffled.remove(sep + 1);
    let next_other = shuffled.iter().skip(sep + 1).position(|l| l.starts_with("COMMIT")).expect("commit") + sep + 1;
    shuffled.insert(next_other, second);
    let mut c = Comparer::new(&config, Family::Ipv4);
    let result: Result<(), SaveError> = shuffled.iter().try_for_each(|l| c.line(l));
    match result {
        Err(SaveError::Syntax { message, .. }) => assert!(message.contains("not together"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_table_printed_twice_is_an_error() {
    let config = web();
    let mut c = Comparer::new(&config, Family::Ipv4);
    for l in ["*nat", "COMMIT"] {
        c.line(l).expect("fine");
    }
    assert!(c.line("*nat").is_err());
}

#[test]
fn the_index_finds_every_chain_the_config_makes_and_no_other() {
    let config = web();
    let services = render::of_family(&config, Family::Ipv4);
    let index = Index::new(services.clone());
    let nat = render::render(&config);
    let nat = nat.table(Family::Ipv4, "nat").expect("nat");
    let mut found = 0;
    for name in nat.chains.keys() {
        match index.find(name) {
            Some(slot) => {
                found += 1;
                assert_eq!(&index.name(slot), name);
            }
            None => assert!(!name.contains("-SEP-") && !name.contains("-SVC-"), "{name}"),
        }
    }
    assert_eq!(found, 3, "two endpoint chains and the service chain");
    assert_eq!(index.find("IPTPROXY-SEP-AAAAAAAAAAAAAAA"), None);
}
