//! Whether the config may be trusted. Running as root, iptproxy turns these files into
//! firewall rules, so like sshd's StrictModes it refuses a file or directory that anyone
//! but root could change: the file itself, the config directory, and every directory above
//! them (where a writer could swap a whole directory). A directory with the sticky bit
//! (`/tmp`) is fine above the config: there, nobody can rename what root owns.

use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Refuse what anyone but root could change: the default when running as root.
    Strict,
    /// Read whatever the process can read: not running as root, or asked to
    /// (`--allow-insecure-config`).
    Any,
}

impl Trust {
    /// Strict when the process runs as root, unless `allow_insecure`.
    pub fn for_process(allow_insecure: bool) -> Trust {
        match allow_insecure || !rustix::process::geteuid().is_root() {
            true => Trust::Any,
            false => Trust::Strict,
        }
    }
}

const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Checks paths against a [`Trust`], remembering the directories already found safe.
pub(super) struct Checker {
    trust: Trust,
    safe_dirs: HashSet<PathBuf>,
}

impl Checker {
    pub fn new(trust: Trust) -> Checker {
        Checker { trust, safe_dirs: HashSet::new() }
    }

    /// The config directory: owned by root, writable by root alone, and so every directory above it.
    pub fn dir(&mut self, dir: &Path) -> Result<(), ConfigError> {
        if self.trust == Trust::Any {
            return Ok(());
        }
        let real = fs::canonicalize(dir).map_err(|source| ConfigError::Dir { dir: dir.to_path_buf(), source })?;
        let meta = fs::metadata(&real).map_err(|source| ConfigError::Dir { dir: dir.to_path_buf(), source })?;
        check_owner_mode(dir, &meta, false)?;
        self.ancestors(dir, &real)
    }

    /// One config file, given what `fstat` says of the open file and the path it was opened
    /// by (its real location may be elsewhere, through a symlink).
    pub fn file(&mut self, path: &Path, meta: &Metadata) -> Result<(), ConfigError> {
        if self.trust == Trust::Any {
            return Ok(());
        }
        check_owner_mode(path, meta, false)?;
        let real = fs::canonicalize(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        self.ancestors(path, &real)
    }

    fn ancestors(&mut self, named: &Path, real: &Path) -> Result<(), ConfigError> {
        for dir in real.ancestors().skip(1) {
            if self.safe_dirs.contains(dir) {
                continue;
            }
            let meta = fs::metadata(dir).map_err(|source| ConfigError::Dir { dir: dir.to_path_buf(), source })?;
            check_owner_mode(dir, &meta, true).map_err(|e| match e {
                ConfigError::Untrusted { path, problem, .. } => ConfigError::Untrusted {
                    path: named.to_path_buf(),
                    problem: format!("{}: {problem}", path.display()),
                },
                other => other,
            })?;
            self.safe_dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }
}

fn check_owner_mode(path: &Path, meta: &Metadata, sticky_ok: bool) -> Result<(), ConfigError> {
    let untrusted = |problem: String| ConfigError::Untrusted { path: path.to_path_buf(), problem };
    if meta.uid() != 0 {
        return Err(untrusted(format!("owned by uid {}, not root", meta.uid())));
    }
    let mode = meta.mode();
    if mode & GROUP_OTHER_WRITE != 0 && !(sticky_ok && meta.is_dir() && mode & STICKY != 0) {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(untrusted(format!("writable by {who} (mode {:o})", mode & 0o7777)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn strict_refuses_what_others_could_write_and_any_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        fs::write(&file, "").unwrap();
        chmod(&file, 0o644);
        let meta = |p: &Path| fs::metadata(p).unwrap();
        assert!(rustix::process::geteuid().is_root(), "the test suite runs as root (see README)");
        let mut strict = Checker::new(Trust::Strict);
        strict.dir(dir.path()).unwrap();
        strict.file(&file, &meta(&file)).unwrap();

        chmod(&file, 0o664);
        let e = strict.file(&file, &meta(&file)).unwrap_err().to_string();
        assert!(e.contains("a.toml: writable by its group (mode 664)"), "{e}");
        assert!(e.contains("--allow-insecure-config"), "{e}");
        chmod(&file, 0o646);
        let e = strict.file(&file, &meta(&file)).unwrap_err().to_string();
        assert!(e.contains("writable by others (mode 646)"), "{e}");
        Checker::new(Trust::Any).file(&file, &meta(&file)).unwrap();

        chmod(&file, 0o644);
        chmod(dir.path(), 0o777);
        let e = Checker::new(Trust::Strict).dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("writable by group and others (mode 777)"), "{e}");
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        chmod(&sub, 0o755);
        let e = Checker::new(Trust::Strict).dir(&sub).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: {}: writable by", sub.display(), dir.path().display())), "{e}");
        chmod(dir.path(), 0o1777);
        Checker::new(Trust::Strict).dir(&sub).unwrap();

        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        let e = Checker::new(Trust::Strict).file(&file, &meta(&file)).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534, not root"), "{e}");
    }
}
