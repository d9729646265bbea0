//! The configuration: every `*.toml` in a directory, merged in name order, validated.
//!
//! [`load_dir`] is the edge that reads files; [`from_sources`] is the pure part, given the
//! files' names and texts.

pub mod addr;
mod error;
mod file;
pub mod reference;
mod trust;

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use addr::Cidr;
pub use error::{ConfigError, ConfigErrors, Location};
pub use trust::Trust;

use crate::ruleset::Family;

/// The largest endpoint weight; weights are relative, so this is plenty.
pub const MAX_WEIGHT: i64 = 10_000;
/// A config file larger than this is refused rather than read.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// kube-proxy's default client-IP affinity timeout.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 3 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Who gets their source address rewritten to the node's on the way to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masquerade {
    /// Clients outside `cluster_cidrs` (everyone when `masquerade_all`); always for traffic
    /// arriving through a node port or external IP.
    Auto,
    Always,
    /// Nobody, except an endpoint calling its own service (hairpin), which cannot work otherwise.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// Relative share of new connections; 0 drains the endpoint.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub protocol: Protocol,
    pub vip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    /// Who may reach the service through its external IPs; empty means everyone.
    pub source_ranges: Vec<Cidr>,
    /// Client-IP affinity timeout, when affinity is on.
    pub affinity_seconds: Option<u32>,
    pub masquerade: Masquerade,
    pub defined_at: Location,
}

impl Service {
    pub fn family(&self) -> Family {
        Family::of(&self.vip)
    }

    /// `shop/web:80/tcp`: how rules, plans and logs name this service.
    pub fn id(&self) -> String {
        format!("{}:{}/{}", self.name, self.port, self.protocol.as_str())
    }

    /// The endpoints that get traffic (weight above 0).
    pub fn active_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.weight > 0)
    }

    /// Whether the two make the same rules: equal in all but where they are written.
    pub fn same_rules(&self, other: &Service) -> bool {
        // Every field named, so that a new one cannot be forgotten here.
        let Service {
            name,
            protocol,
            vip,
            port,
            endpoints,
            node_port,
            external_ips,
            source_ranges,
            affinity_seconds,
            masquerade,
            defined_at: _,
        } = self;
        *name == other.name
            && *protocol == other.protocol
            && *vip == other.vip
            && *port == other.port
            && *endpoints == other.endpoints
            && *node_port == other.node_port
            && *external_ips == other.external_ips
            && *source_ranges == other.source_ranges
            && *affinity_seconds == other.affinity_seconds
            && *masquerade == other.masquerade
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub cluster_cidrs: Vec<Cidr>,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub drop_bit: u8,
    pub random_fully: bool,
    /// Accept forwarded service traffic that no other rule decided on (FORWARD policy DROP).
    pub forward_accept: bool,
    pub canary_interval: u32,
    pub resync_interval: u32,
    /// Seconds iptables waits for the xtables lock.
    pub lock_wait: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 14,
            drop_bit: 15,
            random_fully: true,
            forward_accept: true,
            canary_interval: 10,
            resync_interval: 300,
            lock_wait: 5,
        }
    }
}

impl Settings {
    /// Whether the two shape the rules the same way (the intervals and the lock wait do not).
    pub fn same_rules(&self, other: &Settings) -> bool {
        let Settings {
            cluster_cidrs,
            masquerade_all,
            masquerade_bit,
            drop_bit,
            random_fully,
            forward_accept,
            canary_interval: _,
            resync_interval: _,
            lock_wait: _,
        } = self;
        *cluster_cidrs == other.cluster_cidrs
            && *masquerade_all == other.masquerade_all
            && *masquerade_bit == other.masquerade_bit
            && *drop_bit == other.drop_bit
            && *random_fully == other.random_fully
            && *forward_accept == other.forward_accept
    }

    pub fn masquerade_mark(&self) -> u32 {
        1 << self.masquerade_bit
    }

    pub fn drop_mark(&self) -> u32 {
        1 << self.drop_bit
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub settings: Settings,
    /// Sorted by name.
    pub services: Vec<Service>,
    pub files: Vec<PathBuf>,
}

impl Config {
    pub fn endpoint_count(&self) -> usize {
        self.services.iter().map(|s| s.endpoints.len()).sum()
    }

    /// Whether the two make the same rules, wherever their services are written.
    pub fn same_rules(&self, other: &Config) -> bool {
        self.settings.same_rules(&other.settings)
            && self.services.len() == other.services.len()
            && self.services.iter().zip(&other.services).all(|(a, b)| a.same_rules(b))
    }
}

/// Whether a directory entry is a config file: `*.toml`, not hidden, not an editor's
/// temporary (those start with `.` or `#`, or do not end in `.toml`).
pub fn is_config_file(name: &str) -> bool {
    name.ends_with(".toml") && name.len() > ".toml".len() && !name.starts_with(['.', '#'])
}

/// The config files of `dir`, in name order: every entry named like one, whatever it is
/// (a directory or a FIFO named `x.toml` is an error when loading, not silently skipped).
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir_error = |source| ConfigError::Dir { dir: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(dir_error)? {
        let entry = entry.map_err(dir_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_config_file(name) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and validates every config file in `dir`, refusing untrusted files when running
/// as root (see [`Trust`]).
pub fn load_dir(dir: &Path) -> Result<Config, ConfigErrors> {
    load_dir_trusting(dir, Trust::for_process(false))
}

/// [`load_dir`] with an explicit [`Trust`].
pub fn load_dir_trusting(dir: &Path, trust: Trust) -> Result<Config, ConfigErrors> {
    let mut checker = trust::Checker::new(trust);
    checker.dir(dir)?;
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in config_files(dir)? {
        match read_file(&path, &mut checker) {
            Ok(bytes) => sources.push((path, bytes)),
            Err(e) => errors.push(e),
        }
    }
    match from_sources(sources) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}

/// Reads one file: a regular file (symlinks followed, as a ConfigMap's are), trusted, and
/// at most [`MAX_FILE_BYTES`]. Opened without blocking, so a FIFO put there cannot hang us.
fn read_file(path: &Path, checker: &mut trust::Checker) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |source: std::io::Error| match source.raw_os_error() {
        Some(e) if e == rustix::io::Errno::LOOP.raw_os_error() => {
            ConfigError::NotAFile { path: path.to_path_buf(), problem: "a symlink loop; refusing to read it" }
        }
        _ => ConfigError::Read { path: path.to_path_buf(), source },
    };
    let not_a_file = |meta: &fs::Metadata| {
        let problem = match meta.file_type() {
            t if t.is_dir() => "a directory, not a config file",
            _ => "not a regular file (a FIFO, socket or device); refusing to read it",
        };
        ConfigError::NotAFile { path: path.to_path_buf(), problem }
    };
    let meta = fs::metadata(path).map_err(read_error)?;
    if !meta.is_file() {
        return Err(not_a_file(&meta));
    }
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let file = fs::OpenOptions::new().read(true).custom_flags(nonblock).open(path).map_err(read_error)?;
    // Checked again on what was opened: the entry may have been swapped since.
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(not_a_file(&meta));
    }
    checker.file(path, &meta)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let at = Location::file(&Arc::from(path));
        return Err(ConfigError::invalid(at, format!("larger than {} MiB; refusing to read it", MAX_FILE_BYTES >> 20)));
    }
    Ok(bytes)
}

/// Validates a configuration given as (file name, contents) pairs, in merge order.
pub fn from_sources(sources: Vec<(PathBuf, Vec<u8>)>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut settings: Option<(Settings, Location)> = None;
    let mut services = Vec::new();
    let mut files = Vec::new();
    for (path, bytes) in sources {
        let file: Arc<Path> = Arc::from(path.as_path());
        files.push(path);
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let at = Location::at(&file, &String::from_utf8_lossy(&e.as_bytes()[..valid]), valid);
                errors.push(ConfigError::invalid(at, "not valid UTF-8"));
                continue;
            }
        };
        let parsed = file::parse(&file, &text, &mut errors);
        if let Some((s, at)) = parsed.settings {
            match &settings {
                Some((_, first)) => errors.push(ConfigError::Conflict {
                    at,
                    first: first.clone(),
                    message: "[settings] may appear in one file only".into(),
                }),
                None => settings = Some((s, at)),
            }
        }
        services.extend(parsed.services);
    }
    check_conflicts(&services, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Config { settings: settings.map(|(s, _)| s).unwrap_or_default(), services, files })
}

/// Checks what must be unique across all services: names, the address:port:protocol each
/// service answers on, and node ports.
fn check_conflicts(services: &[Service], errors: &mut Vec<ConfigError>) {
    let mut names: HashMap<&str, &Location> = HashMap::new();
    let mut addrs: HashMap<(IpAddr, u16, Protocol), (&Service, &str)> = HashMap::new();
    let mut node_ports: HashMap<(u16, Protocol, Family), &Service> = HashMap::new();
    let conflict = |s: &Service, first: &Location, message: String| ConfigError::Conflict {
        at: s.defined_at.clone(),
        first: first.clone(),
        message: format!("service \"{}\": {message}", s.name),
    };
    for s in services {
        if let Some(first) = names.insert(&s.name, &s.defined_at) {
            errors.push(conflict(s, first, "the name is already used".into()));
            continue;
        }
        let own = std::iter::once((s.vip, "VIP")).chain(s.external_ips.iter().map(|ip| (*ip, "external IP")));
        for (ip, what) in own {
            if let Some((other, other_what)) = addrs.insert((ip, s.port, s.protocol), (s, what)) {
                let message = format!(
                    "{what} {}/{} is already the {other_what} of service \"{}\"",
                    addr::host_port(ip, s.port),
                    s.protocol.as_str(),
                    other.name
                );
                errors.push(conflict(s, &other.defined_at, message));
            }
        }
        if let Some(np) = s.node_port {
            if let Some(other) = node_ports.insert((np, s.protocol, s.family()), s) {
                let message =
                    format!("node_port {np}/{} is already used by service \"{}\"", s.protocol.as_str(), other.name);
                errors.push(conflict(s, &other.defined_at, message));
            }
        }
    }
}

#[cfg(test)]
mod tests;
