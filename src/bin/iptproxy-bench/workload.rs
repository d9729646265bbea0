//! What the benchmark feeds iptproxy and the kernel: a generated config directory, the
//! one-endpoint edit, and the same changes written the kube-proxy way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use iptproxy::chains;
use iptproxy::plan::{Action, Plan};
use iptproxy::restore;
use iptproxy::ruleset::Ruleset;

use crate::generate;

/// Endpoints the edits add: outside every generated address (ports 8080.. are used).
pub const NEW_ENDPOINT: &str = "198.19.255.254:9999";
pub const DAEMON_ENDPOINT: &str = "198.19.255.253:9999";

/// A config directory of `services` services with `endpoints` each, `per_file` to a file,
/// removed when dropped.
pub struct Workload {
    pub dir: PathBuf,
    pub services: usize,
    pub endpoints: usize,
    pub per_file: usize,
    /// Endpoints added by edits: (service, endpoint).
    extra: std::cell::RefCell<Vec<(usize, String)>>,
}

impl Workload {
    pub fn create(services: usize, endpoints: usize, per_file: usize) -> Result<Workload> {
        let dir = dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let w = Workload { dir, services, endpoints, per_file: per_file.max(1), extra: Default::default() };
        for file in 0..services.div_ceil(w.per_file) {
            w.write(file)?;
        }
        Ok(w)
    }

    pub fn files(&self) -> usize {
        self.services.div_ceil(self.per_file)
    }

    /// Adds `endpoint` to service number `service`, replacing its file atomically (write,
    /// then rename) as an editor or a config manager would.
    pub fn add_endpoint(&self, service: usize, endpoint: &str) -> Result<()> {
        self.extra.borrow_mut().push((service, endpoint.to_string()));
        self.write(service / self.per_file)
    }

    fn path(&self, file: usize) -> PathBuf {
        self.dir.join(format!("{file:04}.toml"))
    }

    fn write(&self, file: usize) -> Result<()> {
        let first = file * self.per_file;
        let count = self.per_file.min(self.services - first);
        let text = generate::services_file(first, count, self.endpoints, &self.extra.borrow());
        let path = self.path(file);
        let tmp = self.dir.join(format!(".{file:04}.toml.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The config directory of this process's workload.
fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("iptproxy-bench-{}", std::process::id()))
}

/// Removes the config directory and the daemon's state file, if there are any.
pub fn remove_dir() {
    let _ = std::fs::remove_dir_all(dir());
    let _ = std::fs::remove_file(dir().with_extension("state.json"));
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// kube-proxy's full sync: every table in one `iptables-restore` run, one transaction per
/// table, each chain declared (created or flushed) and all its rules written.
pub fn full_rewrite(desired: &Ruleset) -> String {
    desired.tables.iter().map(restore::full).collect()
}

/// kube-proxy's partial sync of an edit: the services chain rewritten whole, plus every
/// chain the edit creates or changes, rewritten whole.
pub fn partial_rewrite(desired: &Ruleset, edit: &Plan) -> String {
    let mut out = String::new();
    for tp in &edit.tables {
        let Some(table) = desired.table(tp.family, &tp.table) else { continue };
        let mut names: Vec<&str> = vec![chains::SERVICES];
        names.extend(
            tp.chains
                .iter()
                .filter(|c| c.action != Action::Delete && chains::is_ours(&c.chain) && c.chain != chains::SERVICES)
                .map(|c| c.chain.as_str()),
        );
        out.push_str(&format!("*{}\n", tp.table));
        for name in &names {
            out.push_str(&format!(":{name} - [0:0]\n"));
        }
        for name in &names {
            for rule in table.chains.get(*name).into_iter().flat_map(|c| c.specs()) {
                out.push_str(&format!("-A {name} {rule}\n"));
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}
