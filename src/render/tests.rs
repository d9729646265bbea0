use super::*;
use crate::config::from_sources;

fn config(toml: &str) -> Config {
    from_sources(vec![("a.toml".into(), toml.as_bytes().to_vec())]).unwrap()
}

#[test]
fn probabilities_print_as_iptables_save_does() {
    assert_eq!(probability(1, 3), "0.33333333349");
    assert_eq!(probability(1, 2), "0.50000000000");
    assert_eq!(probability(1, 10), "0.10000000009");
    assert_eq!(probability(3, 4), "0.75000000000");
    assert_eq!(probability(1, 10_000), "0.00009999983");
}

#[test]
fn names_the_service_from_a_comment() {
    assert_eq!(
        service_of(r#"-m comment --comment "shop/web:80/tcp -> 198.19.0.2:80" -j X"#).as_deref(),
        Some("shop/web:80/tcp")
    );
    assert_eq!(service_of(r#"-m comment --comment "iptproxy service portals" -j X"#), None);
    assert_eq!(service_of("-j X"), None);
}

fn rules<'a>(r: &'a Ruleset, family: Family, table: &str, chain: &str) -> Vec<&'a str> {
    r.table(family, table).unwrap().chains[chain].specs().collect()
}

fn svc_chain(c: &Config, i: usize) -> String {
    crate::chains::service_chain("SVC", &c.services[i])
}

/// The share of new connections each cascade rule gets: p_i times the chance that no
/// earlier rule matched.
fn shares(cascade: &[&str]) -> Vec<f64> {
    let mut left = 1.0;
    cascade
        .iter()
        .map(|r| {
            let p = r.split("--probability ").nth(1).map_or(1.0, |p| p.split(' ').next().unwrap().parse().unwrap());
            let share = left * p;
            left -= share;
            share
        })
        .collect()
}

#[test]
fn cascade_shares_follow_weights() {
    let c = config(
        "[[service]]\nname='w'\nvip='198.18.0.1'\nport=80\n\
         endpoints=[{address='198.19.0.1',weight=1},{address='198.19.0.2',weight=3},{address='198.19.0.3',weight=0},'198.19.0.4','198.19.0.5']\n",
    );
    let r = render(&c);
    let svc = rules(&r, Family::Ipv4, "nat", &svc_chain(&c, 0));
    assert_eq!(svc.len(), 4, "the drained endpoint gets no rule: {svc:#?}");
    let weight = |rule: &str| match rule.split(" -> ").nth(1).and_then(|r| r.split(':').next()) {
        Some("198.19.0.1") => 1.0,
        Some("198.19.0.2") => 3.0,
        Some("198.19.0.4" | "198.19.0.5") => 1.0,
        other => panic!("no such endpoint: {other:?}"),
    };
    for (rule, got) in svc.iter().zip(shares(&svc)) {
        let want = weight(rule) / 6.0;
        assert!((got - want).abs() < 1e-8, "{got} vs {want}: {rule}");
    }
    assert!(!svc[3].contains("statistic"), "the last rule takes what is left");
    assert!(svc[0].contains("198.19.0.5:80"), "the last endpoint listed comes first: {svc:#?}");
    let seps = r.table(Family::Ipv4, "nat").unwrap().chains.keys().filter(|k| k.contains("-SEP-")).count();
    assert_eq!(seps, 4);
}

#[test]
fn equal_weights_give_kube_proxy_probabilities() {
    let c = config(
        "[[service]]\nname='e'\nvip='198.18.0.1'\nport=80\nendpoints=['198.19.0.1','198.19.0.2','198.19.0.3']\n",
    );
    let r = render(&c);
    let svc = rules(&r, Family::Ipv4, "nat", &svc_chain(&c, 0));
    assert!(svc[0].contains("--probability 0.33333333349"), "{}", svc[0]);
    assert!(svc[1].contains("--probability 0.50000000000"), "{}", svc[1]);
}

#[test]
fn a_service_without_endpoints_is_rejected_in_filter() {
    let c =
        config("[[service]]\nname='none'\nvip='198.18.0.1'\nport=80\nnode_port=30080\nexternal_ips=['198.18.1.1']\n");
    let r = render(&c);
    assert!(rules(&r, Family::Ipv4, "nat", crate::chains::SERVICES).is_empty());
    let rejects = rules(&r, Family::Ipv4, "filter", crate::chains::SERVICES);
    assert_eq!(rejects.len(), 3);
    assert!(rejects.iter().all(|r| r.ends_with("-j REJECT --reject-with icmp-port-unreachable")));
    assert!(rejects[2].contains("-m addrtype --dst-type LOCAL -m tcp --dport 30080"));
}

#[test]
fn masquerade_follows_settings_and_overrides() {
    let svc =
        |extra: &str| format!("[[service]]\nname='m'\nvip='198.18.0.1'\nport=80\nendpoints=['198.19.0.1']\n{extra}");
    let first_rule = |toml: &str| {
        let c = config(toml);
        let r = render(&c);
        rules(&r, Family::Ipv4, "nat", &svc_chain(&c, 0))[0].to_string()
    };
    let cidrs = "[settings]\ncluster_cidrs=['198.19.0.0/16']\n";
    assert!(first_rule(&format!("{cidrs}{}", svc(""))).ends_with("-j IPTPROXY-MARK-OUTSIDE"));
    assert!(first_rule(&svc("")).contains("--probability") || !first_rule(&svc("")).contains("MARK"));
    let all = "[settings]\nmasquerade_all=true\n";
    assert!(first_rule(&format!("{all}{}", svc(""))).ends_with("-j IPTPROXY-MARK-MASQ"));
    assert!(first_rule(&svc("masquerade='always'")).ends_with("-j IPTPROXY-MARK-MASQ"));
    assert!(!first_rule(&format!("{all}{}", svc("masquerade='never'"))).contains("MARK"));
}

#[test]
fn every_chain_name_fits_and_each_family_gets_its_own_tables() {
    let c = config(
        "[[service]]\nname='a-very-long-service-name/with-parts.and.dots-0123456789-abcdef'\nvip='2001:db8::1'\nport=443\n\
         endpoints=['[2001:db8:1::1]:8443']\nnode_port=30443\nexternal_ips=['2001:db8:2::1']\nsource_ranges=['2001:db8:3::/48']\n",
    );
    let r = render(&c);
    assert!(r.family(Family::Ipv4).next().is_none());
    let nat = r.table(Family::Ipv6, "nat").unwrap();
    for name in nat.chains.keys() {
        assert!(name.len() <= crate::chains::MAX_NAME, "{name}");
    }
    let sep = nat.chains.iter().find(|(k, _)| k.contains("-SEP-")).unwrap().1;
    assert_eq!(sep.rules[0].spec.split(' ').take(2).collect::<Vec<_>>(), ["-s", "2001:db8:1::1/128"]);
    assert!(sep.rules[1].spec.ends_with("-j DNAT --to-destination [2001:db8:1::1]:8443"));
    let services: Vec<&str> = nat.chains[crate::chains::SERVICES].specs().collect();
    assert!(services.last().unwrap().starts_with("! -d ::1/128 "));
}

#[test]
fn rendering_does_not_depend_on_file_order() {
    let a = "[[service]]\nname='a'\nvip='198.18.0.1'\nport=80\nendpoints=['198.19.0.1']\n";
    let b = "[[service]]\nname='b'\nvip='198.18.0.2'\nport=80\nendpoints=['198.19.0.2']\n";
    let load = |files: &[(&str, &str)]| {
        let sources = files.iter().map(|(n, t)| ((*n).into(), t.as_bytes().to_vec())).collect();
        render(&from_sources(sources).unwrap())
    };
    assert_eq!(load(&[("1.toml", a), ("2.toml", b)]), load(&[("1.toml", b), ("2.toml", a)]));
}

proptest::proptest! {
    /// The whole ruleset is exactly its pieces: each table's frame, and each service's own
    /// chains, which render alone (one at a time, by name) as they do all together.
    #[test]
    fn the_whole_is_the_assembly_of_pieces_that_render_alone(spec in crate::testing::config_spec()) {
        let config = spec.config();
        let whole = render(&config);
        let mut assembled = Vec::new();
        for family in families(&config) {
            let services = of_family(&config, family);
            for name in TABLES {
                let frame = frame(&config.settings, family, name, &services);
                let mut table = Table::new(family, name);
                table.hooks = frame.hooks.clone();
                table.chains.extend(frame.chains().cloned());
                if name == "nat" {
                    for s in &services {
                        let all = service::chains(&config.settings, s);
                        let names = service::chain_names(s);
                        proptest::prop_assert_eq!(all.len(), names.len());
                        for ((which, name), (n, chain)) in names.iter().zip(&all) {
                            proptest::prop_assert_eq!(name, n);
                            let alone = service::chain(&config.settings, s, *which);
                            proptest::prop_assert_eq!(Some(chain), alone.as_ref());
                            proptest::prop_assert!(table.chains.insert(name.clone(), chain.clone()).is_none());
                        }
                    }
                }
                assembled.push(table);
            }
        }
        proptest::prop_assert_eq!(whole, Ruleset { tables: assembled });
    }
}

#[test]
fn an_endpoint_appended_to_the_list_is_one_rule_inserted_at_the_top() {
    let eps = |n: usize| (1..=n).map(|i| format!("'198.19.0.{i}:80'")).collect::<Vec<_>>().join(",");
    let before = config(&format!("[[service]]\nname='a'\nvip='198.18.0.1'\nport=80\nendpoints=[{}]\n", eps(10)));
    let after = config(&format!("[[service]]\nname='a'\nvip='198.18.0.1'\nport=80\nendpoints=[{}]\n", eps(11)));
    let (b, a) = (render(&before), render(&after));
    let chain = svc_chain(&before, 0);
    let (old, new) = (rules(&b, Family::Ipv4, "nat", &chain), rules(&a, Family::Ipv4, "nat", &chain));
    assert_eq!(new.len(), old.len() + 1);
    assert_eq!(&new[1..], &old[..], "every other rule stays as it was");
}
