use super::*;

fn load(files: &[(&str, &str)]) -> Result<Config, String> {
    let sources = files.iter().map(|(n, t)| (PathBuf::from(n), t.as_bytes().to_vec())).collect();
    from_sources(sources).map_err(|e| e.to_string())
}

fn error(files: &[(&str, &str)]) -> String {
    match load(files) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

const WEB: &str = r#"
[[service]]
name = "shop/web"
vip = "198.18.0.10"
port = 80
endpoints = ["198.19.0.2:8080", { address = "198.19.0.4", port = 8080, weight = 3 }, "198.19.0.5"]
"#;

#[test]
fn reads_a_service_with_defaults() {
    let c = load(&[("web.toml", WEB)]).unwrap();
    assert_eq!(c.settings, Settings::default());
    let s = &c.services[0];
    assert_eq!((s.name.as_str(), s.protocol, s.port), ("shop/web", Protocol::Tcp, 80));
    assert_eq!(s.id(), "shop/web:80/tcp");
    let eps: Vec<_> = s.endpoints.iter().map(|e| (e.addr.to_string(), e.port, e.weight)).collect();
    assert_eq!(
        eps,
        [("198.19.0.2".into(), 8080, 1), ("198.19.0.4".into(), 8080, 3), ("198.19.0.5".to_string(), 80, 1)]
    );
    assert_eq!(s.defined_at.to_string(), "web.toml:2");
    assert_eq!(s.masquerade, Masquerade::Auto);
    assert_eq!(s.affinity_seconds, None);
}

#[test]
fn reads_every_setting_and_option() {
    let c = load(&[(
        "a.toml",
        r#"
[settings]
cluster_cidrs = ["198.19.0.0/16", "2001:db8:1::/64"]
masquerade_all = true
masquerade_bit = 1
drop_bit = 2
random_fully = false
forward_accept = false
canary_interval = "30s"
resync_interval = "1m"
lock_wait = "2s"

[[service]]
name = "dns"
protocol = "udp"
vip = "2001:db8::53"
port = 53
endpoints = ["[2001:db8:1::2]:5353", "2001:db8:1::3"]
node_port = 30053
external_ips = ["2001:db8:2::1"]
source_ranges = ["2001:db8:3::/48", "2001:db8:4::1"]
session_affinity = "client-ip"
affinity_timeout = "1h"
masquerade = "never"
"#,
    )])
    .unwrap();
    let s = &c.settings;
    assert_eq!(s.cluster_cidrs.len(), 2);
    assert!(s.masquerade_all && !s.random_fully && !s.forward_accept);
    assert_eq!((s.masquerade_mark(), s.drop_mark()), (2, 4));
    assert_eq!((s.canary_interval, s.resync_interval, s.lock_wait), (30, 60, 2));
    let d = &c.services[0];
    assert_eq!(d.family(), Family::Ipv6);
    assert_eq!(d.endpoints[1].port, 53);
    assert_eq!(d.node_port, Some(30053));
    assert_eq!(d.source_ranges[1].to_string(), "2001:db8:4::1/128");
    assert_eq!(d.affinity_seconds, Some(3600));
    assert_eq!(d.masquerade, Masquerade::Never);
}

#[test]
fn affinity_defaults_to_three_hours() {
    let c = load(&[("a.toml", "[[service]]\nname='a'\nvip='198.18.0.1'\nport=1\nsession_affinity='client-ip'\n")]);
    assert_eq!(c.unwrap().services[0].affinity_seconds, Some(10800));
}

#[test]
fn names_file_line_and_field() {
    let bad = WEB.replace("198.19.0.2:8080", "198.19.0.300:80");
    assert_eq!(
        error(&[("web.toml", &bad)]),
        r#"web.toml:6: service "shop/web": endpoint: "198.19.0.300:80": invalid IPv4 address"#
    );
    let e = error(&[("web.toml", "[[service]]\nname = \"a\"\nvip = \"198.18.0.1\"\nport = \"x\"\n")]);
    assert_eq!(e, r#"web.toml:4: service "a": port: expected an integer from 1 to 65535, found a string"#);
    let e = error(&[("web.toml", "[[service]]\nname = \"a\"\nvip = \"198.18.0.1\"\nport = 65536\n")]);
    assert_eq!(e, r#"web.toml:4: service "a": port: 65536 is out of range (1 to 65535)"#);
    let e = error(&[("web.toml", "[[service]]\nvip = \"198.18.0.1\"\nport = 1\n")]);
    assert_eq!(e, r#"web.toml:1: service: missing field "name""#);
}

#[test]
fn reports_every_error_at_once() {
    let e = error(&[
        ("a.toml", "[[service]]\nname = \"a\"\nvip = \"x\"\nport = 0\n"),
        ("b.toml", "[[service]]\nname = \"B\"\nvip = \"198.18.0.1\"\nport = 1\n"),
    ]);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 3, "{e}");
    assert!(lines[0].starts_with("a.toml:3: service \"a\": vip: not an IP address"), "{e}");
    assert!(lines[1].starts_with("a.toml:4: service \"a\": port: 0 is out of range"), "{e}");
    assert!(lines[2].starts_with("b.toml:2: service: name: \"B\" must match"), "{e}");
}

#[test]
fn rejects_unknown_keys_and_bad_syntax() {
    let e = error(&[("a.toml", "[[service]]\nname = \"a\"\nvipp = \"198.18.0.1\"\n")]);
    assert!(e.starts_with("a.toml:3: unknown field `vipp`"), "{e}");
    let e = error(&[("a.toml", "[settings]\nmasquerade_bits = 3\n")]);
    assert!(e.starts_with("a.toml:2: unknown field `masquerade_bits`"), "{e}");
    let e = error(&[("a.toml", "[[service]\n")]);
    assert!(e.starts_with("a.toml:1: "), "{e}");
    let e = error(&[("a.toml", &WEB.replace("weight = 3", "wieght = 3"))]);
    assert!(e.contains("unknown key \"wieght\""), "{e}");
}

#[test]
fn rejects_mixed_families() {
    let e = error(&[("a.toml", "[[service]]\nname='a'\nvip='198.18.0.1'\nport=1\nendpoints=['[2001:db8::1]:80']\n")]);
    assert!(e.contains("address family IPv6 does not match the VIP 198.18.0.1 (IPv4)"), "{e}");
    let e = error(&[(
        "a.toml",
        "[[service]]\nname='a'\nvip='198.18.0.1'\nport=1\nexternal_ips=['198.18.0.2']\nsource_ranges=['2001:db8::/32']\n",
    )]);
    assert!(e.contains("source_ranges: address family IPv6"), "{e}");
}

#[test]
fn rejects_conflicts_across_files_naming_both() {
    let svc = |name: &str, vip: &str| format!("[[service]]\nname='{name}'\nvip='{vip}'\nport=80\n");
    let e = error(&[("a.toml", &svc("a", "198.18.0.1")), ("b.toml", &svc("a", "198.18.0.2"))]);
    assert_eq!(e, r#"b.toml:1: service "a": the name is already used (first at a.toml:1)"#);
    let e = error(&[("a.toml", &svc("a", "198.18.0.1")), ("b.toml", &svc("b", "198.18.0.1"))]);
    assert_eq!(
        e,
        r#"b.toml:1: service "b": VIP 198.18.0.1:80/tcp is already the VIP of service "a" (first at a.toml:1)"#
    );
    let e = error(&[("a.toml", "[settings]\n"), ("b.toml", "\n[settings]\n")]);
    assert_eq!(e, "b.toml:2: [settings] may appear in one file only (first at a.toml:1)");
    let np = |name: &str, vip: &str| format!("{}node_port=30080\n", svc(name, vip));
    let e = error(&[("a.toml", &np("a", "198.18.0.1")), ("b.toml", &np("b", "198.18.0.2"))]);
    assert!(e.contains("node_port 30080/tcp is already used by service \"a\""), "{e}");
}

#[test]
fn same_port_on_other_protocol_is_fine() {
    let c = load(&[(
        "a.toml",
        "[[service]]\nname='a'\nvip='198.18.0.1'\nport=53\n[[service]]\nname='b'\nvip='198.18.0.1'\nport=53\nprotocol='udp'\n",
    )]);
    assert_eq!(c.unwrap().services.len(), 2);
}

#[test]
fn rejects_bad_values() {
    let base = "[[service]]\nname='a'\nvip='198.18.0.1'\nport=80\n";
    for (extra, needle) in [
        ("protocol='icmp'\n", "protocol: \"icmp\" is not one of tcp, udp, sctp"),
        ("endpoints=[{address='198.19.0.1', weight=-1}]\n", "weight: -1 is out of range"),
        ("endpoints=[{address='198.19.0.1', weight=10001}]\n", "weight: 10001 is out of range"),
        ("endpoints=[{port=80}]\n", "missing key \"address\""),
        ("endpoints=[42]\n", "found an integer"),
        ("endpoints=['198.19.0.1:80','198.19.0.1:80']\n", "is listed twice"),
        ("session_affinity='cookie'\n", "session_affinity: \"cookie\" is not one of none, client-ip"),
        ("affinity_timeout='1h'\n", "needs session_affinity"),
        ("session_affinity='client-ip'\naffinity_timeout='2d'\n", "out of range"),
        ("session_affinity='client-ip'\naffinity_timeout='1.5s'\n", "whole seconds"),
        ("source_ranges=['198.18.0.0/15']\n", "external_ips is empty"),
        ("external_ips=['198.18.0.1']\n", "is listed twice (or is the VIP)"),
        ("masquerade='sometimes'\n", "masquerade: \"sometimes\" is not one of auto, always, never"),
        ("node_port=0\n", "node_port: 0 is out of range"),
    ] {
        let e = error(&[("a.toml", &format!("{base}{extra}"))]);
        assert!(e.contains(needle), "{extra}: {e}");
    }
    let e = error(&[("a.toml", "[settings]\nmasquerade_bit=3\ndrop_bit=3\n")]);
    assert!(e.contains("drop_bit: must differ from masquerade_bit"), "{e}");
    let e = error(&[("a.toml", "[settings]\nmasquerade_bit=32\n")]);
    assert!(e.contains("masquerade_bit: 32 is out of range (0 to 31)"), "{e}");
}

#[test]
fn rejects_bad_names() {
    for name in ["Web", "-web", "", "web\\nx", "we b", "web\"", &"a".repeat(64)] {
        let toml = format!("[[service]]\nname = {name:?}\nvip='198.18.0.1'\nport=1\n");
        let e = error(&[("a.toml", &toml)]);
        assert!(e.contains("service: name: "), "{name}: {e}");
    }
}

#[test]
fn rejects_invalid_utf8_naming_the_line() {
    let sources = vec![(PathBuf::from("a.toml"), b"# ok\n# \xff\n".to_vec())];
    assert_eq!(from_sources(sources).unwrap_err().to_string(), "a.toml:2: not valid UTF-8");
}

#[test]
fn picks_config_files() {
    for name in ["web.toml", "10-web.toml", "..data.toml.x", "a.b.toml"] {
        assert_eq!(is_config_file(name), !name.starts_with('.') && name.ends_with(".toml"), "{name}");
    }
    for name in [".web.toml", ".web.toml.swp", "web.toml~", "#web.toml#", ".#web.toml", "4913", ".toml", "web.toml.tmp"]
    {
        assert!(!is_config_file(name), "{name}");
    }
}

#[test]
fn loads_a_directory_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let svc = |name: &str, vip: &str| format!("[[service]]\nname='{name}'\nvip='{vip}'\nport=80\n");
    fs::write(dir.path().join("b.toml"), svc("b", "198.18.0.2")).unwrap();
    fs::write(dir.path().join("a.toml"), svc("zz", "198.18.0.1")).unwrap();
    fs::write(dir.path().join(".hidden.toml"), "garbage").unwrap();
    fs::write(dir.path().join("notes.txt"), "garbage").unwrap();
    let c = load_dir(dir.path()).unwrap();
    let names: Vec<_> = c.files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(names, ["a.toml", "b.toml"]);
    assert_eq!(c.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["b", "zz"]);
    let missing = load_dir(&dir.path().join("nope")).unwrap_err().to_string();
    assert!(missing.contains("cannot read the config directory"), "{missing}");
}
