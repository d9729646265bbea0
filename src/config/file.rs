//! One TOML file: its syntax, its types, and every check that needs only that file.
//!
//! Scalar fields are read as `toml::Value` and type-checked here, so that each message
//! names the field and the service in an operator's words, with the line it is on.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::addr::{parse_cidr, parse_host_port, parse_ip};
use super::error::{ConfigError, Location};
use super::{Endpoint, Masquerade, Protocol, Service, Settings};
use crate::ruleset::Family;

type Field = Option<Spanned<Value>>;
type List = Option<Spanned<Vec<Spanned<Value>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    settings: Option<Spanned<RawSettings>>,
    service: Option<Vec<Spanned<RawService>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    cluster_cidrs: List,
    masquerade_all: Field,
    masquerade_bit: Field,
    drop_bit: Field,
    random_fully: Field,
    forward_accept: Field,
    canary_interval: Field,
    resync_interval: Field,
    lock_wait: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Field,
    protocol: Field,
    vip: Field,
    port: Field,
    endpoints: List,
    node_port: Field,
    external_ips: List,
    source_ranges: List,
    session_affinity: Field,
    affinity_timeout: Field,
    masquerade: Field,
}

/// What one file contributes: maybe the settings, and its services.
pub(super) struct FileConfig {
    pub settings: Option<(Settings, Location)>,
    pub services: Vec<Service>,
}

/// Parses one file. Errors are pushed to `errors`; what is valid is still returned so that
/// checks across files can report everything at once.
pub(super) fn parse(path: &Arc<Path>, source: &str, errors: &mut Vec<ConfigError>) -> FileConfig {
    let line_starts = std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let mut cx = Cx { file: path, source, errors, line_starts, count: 0 };
    let raw: RawFile = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            let at = match e.span() {
                Some(span) => cx.loc(span.start),
                None => Location::file(path),
            };
            let message = e.message().replace("expected a sequence", "expected an array");
            cx.errors.push(ConfigError::invalid(at, message));
            return FileConfig { settings: None, services: Vec::new() };
        }
    };
    let settings = raw.settings.and_then(|s| {
        let at = cx.loc(s.span().start);
        cx.settings(s.get_ref()).map(|settings| (settings, at))
    });
    let services = raw.service.unwrap_or_default().iter().filter_map(|s| cx.service(s)).collect();
    FileConfig { settings, services }
}

struct Cx<'a> {
    file: &'a Arc<Path>,
    source: &'a str,
    errors: &'a mut Vec<ConfigError>,
    /// Where each line starts, so that placing an error costs a lookup, not a scan: a
    /// 4 MiB file of bad array elements would otherwise take hours.
    line_starts: Vec<usize>,
    /// Errors reported for this file so far.
    count: usize,
}

/// Past this many errors in one file, the rest of it is not reported.
const MAX_ERRORS_PER_FILE: usize = 20;

/// Where a field's error is reported: its value's line, under a prefix like `service "web"`.
struct Scope<'s> {
    prefix: &'s str,
    fallback: usize,
}

impl Cx<'_> {
    fn loc(&self, offset: usize) -> Location {
        let offset = offset.min(self.source.len());
        Location { file: Arc::clone(self.file), line: Some(self.line_starts.partition_point(|&s| s <= offset)) }
    }

    fn error(&mut self, scope: &Scope, offset: Option<usize>, field: &str, message: impl AsRef<str>) {
        self.count += 1;
        if self.count > MAX_ERRORS_PER_FILE {
            return;
        }
        let at = self.loc(offset.unwrap_or(scope.fallback));
        if self.count == MAX_ERRORS_PER_FILE {
            let message = format!("{} errors in this file; the rest of it is not checked", MAX_ERRORS_PER_FILE - 1);
            self.errors.push(ConfigError::invalid(at, message));
            return;
        }
        let message = match (scope.prefix, field) {
            ("", f) => format!("{f}: {}", message.as_ref()),
            (p, "") => format!("{p}: {}", message.as_ref()),
            (p, f) => format!("{p}: {f}: {}", message.as_ref()),
        };
        self.errors.push(ConfigError::invalid(at, message));
    }

    /// A required or optional value of one type, converted by `convert`.
    fn get<T>(
        &mut self,
        scope: &Scope,
        field: &str,
        value: &Field,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<Option<T>, ()> {
        let Some(value) = value else { return Ok(None) };
        convert(value.get_ref()).map(Some).map_err(|m| self.error(scope, Some(value.span().start), field, m))
    }

    fn required<T>(
        &mut self,
        scope: &Scope,
        field: &str,
        value: &Field,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<T, ()> {
        match self.get(scope, field, value, convert)? {
            Some(v) => Ok(v),
            None => {
                self.error(scope, None, "", format!("missing field \"{field}\""));
                Err(())
            }
        }
    }

    /// Each element of an array through `convert`; errors name the element's own line.
    fn list<T>(
        &mut self,
        scope: &Scope,
        field: &str,
        list: &List,
        mut convert: impl FnMut(&Value) -> Result<T, String>,
    ) -> Result<Vec<T>, ()> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in list.get_ref() {
            match convert(item.get_ref()) {
                Ok(v) => out.push(v),
                Err(m) => {
                    ok = false;
                    self.error(scope, Some(item.span().start), field, m);
                }
            }
        }
        if ok { Ok(out) } else { Err(()) }
    }

    fn settings(&mut self, raw: &RawSettings) -> Option<Settings> {
        let scope = Scope { prefix: "settings", fallback: 0 };
        let d = Settings::default();
        let s = (|| {
            let cluster_cidrs = self.list(&scope, "cluster_cidrs", &raw.cluster_cidrs, cidr);
            let masquerade_all = self.get(&scope, "masquerade_all", &raw.masquerade_all, boolean);
            let masquerade_bit = self.get(&scope, "masquerade_bit", &raw.masquerade_bit, |v| int(v, 0, 31));
            let drop_bit = self.get(&scope, "drop_bit", &raw.drop_bit, |v| int(v, 0, 31));
            let random_fully = self.get(&scope, "random_fully", &raw.random_fully, boolean);
            let forward_accept = self.get(&scope, "forward_accept", &raw.forward_accept, boolean);
            let canary = self.get(&scope, "canary_interval", &raw.canary_interval, |v| duration(v, 1, 3600));
            let resync = self.get(&scope, "resync_interval", &raw.resync_interval, |v| duration(v, 1, 86400));
            let lock_wait = self.get(&scope, "lock_wait", &raw.lock_wait, |v| duration(v, 1, 600));
            let settings = Settings {
                cluster_cidrs: cluster_cidrs?,
                masquerade_all: masquerade_all?.unwrap_or(d.masquerade_all),
                masquerade_bit: masquerade_bit?.map_or(d.masquerade_bit, |b| b as u8),
                drop_bit: drop_bit?.map_or(d.drop_bit, |b| b as u8),
                random_fully: random_fully?.unwrap_or(d.random_fully),
                forward_accept: forward_accept?.unwrap_or(d.forward_accept),
                canary_interval: canary?.unwrap_or(d.canary_interval),
                resync_interval: resync?.unwrap_or(d.resync_interval),
                lock_wait: lock_wait?.unwrap_or(d.lock_wait),
            };
            Ok::<_, ()>(settings)
        })()
        .ok()?;
        if s.masquerade_bit == s.drop_bit {
            let at = raw.drop_bit.as_ref().map(|v| v.span().start);
            self.error(&scope, at, "drop_bit", "must differ from masquerade_bit");
            return None;
        }
        Some(s)
    }

    fn service(&mut self, raw: &Spanned<RawService>) -> Option<Service> {
        let start = raw.span().start;
        let r = raw.get_ref();
        let unnamed = Scope { prefix: "service", fallback: start };
        let name = self.required(&unnamed, "name", &r.name, service_name).ok()?;
        let prefix = format!("service \"{name}\"");
        let scope = Scope { prefix: &prefix, fallback: start };

        let protocol = self.get(&scope, "protocol", &r.protocol, protocol);
        let vip = self.required(&scope, "vip", &r.vip, |v| parse_ip(string(v)?));
        let port = self.required(&scope, "port", &r.port, port_number);
        let node_port = self.get(&scope, "node_port", &r.node_port, port_number);
        let affinity = self.get(&scope, "session_affinity", &r.session_affinity, |v| {
            one_of(v, &["none", "client-ip"]).map(|s| s == "client-ip")
        });
        let timeout = self.get(&scope, "affinity_timeout", &r.affinity_timeout, |v| duration(v, 1, 86400));
        let masquerade = self.get(&scope, "masquerade", &r.masquerade, |v| {
            one_of(v, &["auto", "always", "never"]).map(|s| match s {
                "always" => Masquerade::Always,
                "never" => Masquerade::Never,
                _ => Masquerade::Auto,
            })
        });
        let (vip, port) = (vip.ok()?, port.ok()?);
        let family = Family::of(&vip);
        let same_family = |addr: &IpAddr| -> Result<(), String> {
            match Family::of(addr) == family {
                true => Ok(()),
                false => Err(format!("address family {} does not match the VIP {vip} ({family})", Family::of(addr))),
            }
        };
        let endpoints = self.list(&scope, "endpoint", &r.endpoints, |v| {
            let ep = endpoint(v, port)?;
            same_family(&ep.addr).map_err(|m| format!("{}: {m}", describe(v)))?;
            Ok(ep)
        });
        let external_ips = self.list(&scope, "external_ips", &r.external_ips, |v| {
            let ip = parse_ip(string(v)?).map_err(|m| format!("\"{}\": {m}", string(v).unwrap_or_default()))?;
            same_family(&ip).map(|()| ip)
        });
        let source_ranges = self.list(&scope, "source_ranges", &r.source_ranges, |v| {
            let c = cidr(v)?;
            same_family(&c.addr).map(|()| c)
        });

        let (protocol, node_port, affinity, timeout, masquerade) =
            (protocol.ok()?, node_port.ok()?, affinity.ok()?, timeout.ok()?, masquerade.ok()?);
        let (endpoints, external_ips, source_ranges) = (endpoints.ok()?, external_ips.ok()?, source_ranges.ok()?);

        let mut ok = true;
        if timeout.is_some() && affinity != Some(true) {
            let at = r.affinity_timeout.as_ref().map(|v| v.span().start);
            self.error(&scope, at, "affinity_timeout", "needs session_affinity = \"client-ip\"");
            ok = false;
        }
        if !source_ranges.is_empty() && external_ips.is_empty() {
            let at = r.source_ranges.as_ref().map(|v| v.span().start);
            self.error(&scope, at, "source_ranges", "limits who may use the external IPs, but external_ips is empty");
            ok = false;
        }
        // Sets, not pairwise comparisons: a file may list a hundred thousand endpoints.
        let mut seen = std::collections::HashSet::new();
        for (i, ep) in endpoints.iter().enumerate() {
            if !seen.insert((ep.addr, ep.port)) {
                let at = r.endpoints.as_ref().and_then(|l| l.get_ref().get(i)).map(|v| v.span().start);
                let what = crate::config::addr::host_port(ep.addr, ep.port);
                self.error(&scope, at, "endpoint", format!("\"{what}\" is listed twice"));
                ok = false;
            }
        }
        let mut seen = std::collections::HashSet::from([vip]);
        for (i, ip) in external_ips.iter().enumerate() {
            if !seen.insert(*ip) {
                let at = r.external_ips.as_ref().and_then(|l| l.get_ref().get(i)).map(|v| v.span().start);
                self.error(&scope, at, "external_ips", format!("{ip} is listed twice (or is the VIP)"));
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Service {
            name,
            protocol: protocol.unwrap_or(Protocol::Tcp),
            vip,
            port,
            endpoints,
            node_port,
            external_ips,
            source_ranges,
            affinity_seconds: match affinity {
                Some(true) => Some(timeout.unwrap_or(super::DEFAULT_AFFINITY_SECONDS)),
                _ => None,
            },
            masquerade: masquerade.unwrap_or(Masquerade::Auto),
            defined_at: self.loc(start),
        })
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn string(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| format!("expected a string, found {}", type_name(v)))
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("expected true or false, found {}", type_name(v)))
}

fn int(v: &Value, min: i64, max: i64) -> Result<i64, String> {
    match v.as_integer() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(format!("{n} is out of range ({min} to {max})")),
        None => Err(format!("expected an integer from {min} to {max}, found {}", type_name(v))),
    }
}

fn port_number(v: &Value) -> Result<u16, String> {
    int(v, 1, 65535).map(|n| n as u16)
}

fn one_of<'v>(v: &'v Value, allowed: &[&str]) -> Result<&'v str, String> {
    let s = string(v)?;
    match allowed.contains(&s) {
        true => Ok(s),
        false => Err(format!("\"{s}\" is not one of {}", allowed.join(", "))),
    }
}

fn protocol(v: &Value) -> Result<Protocol, String> {
    Ok(match one_of(v, &["tcp", "udp", "sctp"])? {
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => Protocol::Tcp,
    })
}

/// A duration like `"3h"` or `"90s"`, in whole seconds from `min` to `max`.
fn duration(v: &Value, min: u32, max: u32) -> Result<u32, String> {
    let s = string(v)?;
    let d: Duration =
        humantime::parse_duration(s).map_err(|e| format!("\"{s}\": {e} (e.g. \"90s\", \"5m\", \"3h\")"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("\"{s}\" must be whole seconds"));
    }
    match u32::try_from(d.as_secs()) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("\"{s}\" is out of range ({min}s to {max}s)")),
    }
}

fn cidr(v: &Value) -> Result<super::addr::Cidr, String> {
    let s = string(v)?;
    parse_cidr(s).map_err(|m| format!("\"{s}\": {m}"))
}

/// The service name grammar: `[a-z0-9][a-z0-9._/-]*`, at most 63 characters.
fn service_name(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let first_ok = s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._/-".contains(c));
    if s.len() > 63 {
        return Err(format!("\"{}...\" is longer than 63 characters", s.chars().take(20).collect::<String>()));
    }
    if !first_ok || !rest_ok {
        return Err(format!("{s:?} must match [a-z0-9][a-z0-9._/-]*"));
    }
    Ok(s.to_string())
}

/// How an endpoint value reads in a message.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Table(t) => match t.get("address").and_then(Value::as_str) {
            Some(a) => format!("\"{a}\""),
            None => "{...}".into(),
        },
        other => other.to_string(),
    }
}

/// An endpoint: `"ip:port"`, `"ip"` (the service's port), or `{ address, port, weight }`.
fn endpoint(v: &Value, service_port: u16) -> Result<Endpoint, String> {
    let with = |m: String| format!("{}: {m}", describe(v));
    match v {
        Value::String(s) => {
            let (addr, port) = parse_host_port(s).map_err(with)?;
            Ok(Endpoint { addr, port: port.unwrap_or(service_port), weight: 1 })
        }
        Value::Table(t) => {
            if let Some(key) = t.keys().find(|k| !["address", "port", "weight"].contains(&k.as_str())) {
                return Err(with(format!("unknown key \"{key}\" (expected address, port, weight)")));
            }
            let address = t.get("address").ok_or_else(|| with("missing key \"address\"".into()))?;
            let addr = parse_ip(string(address).map_err(|m| with(format!("address: {m}")))?).map_err(with)?;
            let port = match t.get("port") {
                Some(p) => port_number(p).map_err(|m| with(format!("port: {m}")))?,
                None => service_port,
            };
            let weight = match t.get("weight") {
                Some(w) => int(w, 0, super::MAX_WEIGHT).map_err(|m| with(format!("weight: {m}")))? as u32,
                None => 1,
            };
            Ok(Endpoint { addr, port, weight })
        }
        other => Err(format!(
            "expected \"address:port\" or {{ address = ..., port = ..., weight = ... }}, found {}",
            type_name(other)
        )),
    }
}
