//! Watching the config directory, and deciding when a burst of changes is over.
//!
//! The directory itself is watched (not each file, not recursively), so every way a file
//! can change is seen: written in place, replaced by an editor's write-temp-then-rename,
//! created, removed, or swapped in by a Kubernetes ConfigMap, whose files are links through
//! a `..data` symlink that is replaced atomically. Raw events go to the daemon's loop, which
//! waits for them to settle ([`Settle`]) before it reloads: one reload per burst, and
//! never while a config file is still open for writing.
//!
//! A file renamed into place (an editor's or a config manager's save, a ConfigMap swap) or
//! removed is complete by construction: there is nothing half-written to wait for, only
//! the rest of a burst, so such changes settle after [`QUIET_REPLACED`]. A file written in
//! place may still be growing when its last event arrives, so anything else waits
//! [`QUIET`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};

use crate::config;

/// How long the directory must be quiet before a reload: longer than the gap between the
/// writes of one save or one ConfigMap swap, short enough to feel immediate.
pub const QUIET: Duration = Duration::from_millis(200);
/// The same when every change was a rename into place or a removal: long enough to take in
/// a burst of renames done back to back (a deployment tool, `rsync`), short next to the
/// cost of the apply that follows.
pub const QUIET_REPLACED: Duration = Duration::from_millis(50);
/// A stream of changes that never pauses is still reloaded this often.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// The name of the symlink a ConfigMap volume swaps to publish a new version.
const CONFIGMAP_DATA: &str = "..data";

/// How often the daemon checks that the directory it watches is still the one at its path.
pub const DIR_CHECK: Duration = Duration::from_secs(2);

/// The watch on the config directory. A watch follows the directory itself, not its path:
/// when the directory is removed and made again, or another is moved into its place (a
/// config manager replacing it whole), [`DirWatch::renew`] watches the new one.
pub struct DirWatch {
    dir: PathBuf,
    watcher: notify::RecommendedWatcher,
    /// The (device, inode) of the directory watched; `None` while there is none.
    watched: Option<(u64, u64)>,
}

impl DirWatch {
    /// Watches `dir` until dropped, handing every event to `send` (on notify's thread).
    pub fn new(dir: &Path, send: impl Fn(notify::Result<Event>) + Send + 'static) -> notify::Result<DirWatch> {
        let mut watcher = notify::recommended_watcher(send)?;
        let watched = identity(dir);
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(DirWatch { dir: dir.to_path_buf(), watcher, watched })
    }

    /// Watches the directory at the path again if it is not the one watched. `Ok(true)`
    /// when it did: the files must be read again.
    pub fn renew(&mut self) -> notify::Result<bool> {
        let now = identity(&self.dir);
        if now == self.watched {
            return Ok(false);
        }
        // The old watch is gone with its directory, or follows it elsewhere.
        let _ = self.watcher.unwatch(&self.dir);
        self.watched = None;
        if now.is_some() {
            self.watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
            self.watched = now;
        }
        Ok(now.is_some())
    }
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

/// What one file event means for the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A config file (or the `..data` link) appeared or changed.
    Changed(PathBuf),
    /// A config file (or the `..data` link) was renamed into place: complete.
    Replaced(PathBuf),
    /// A config file went away (removed or renamed away).
    Gone(PathBuf),
    /// A config file is being written.
    Writing(PathBuf),
    /// A config file was closed after writing.
    Closed(PathBuf),
    /// Events were lost: everything must be read again.
    Rescan,
}

/// The changes an event stands for; none for files that are not config (dotfiles, editor
/// temporaries) and for reads, including the daemon's own.
pub fn classify(event: &Event) -> Vec<Change> {
    if event.need_rescan() {
        return vec![Change::Rescan];
    }
    let relevant = |p: &&PathBuf| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| config::is_config_file(n) || n == CONFIGMAP_DATA)
    };
    let change: fn(PathBuf) -> Change = match event.kind {
        EventKind::Create(_) => Change::Changed,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Change::Gone,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Change::Replaced,
        // `Both` repeats a `From` and a `To` already reported on their own.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => return Vec::new(),
        EventKind::Modify(ModifyKind::Data(_)) => Change::Writing,
        EventKind::Modify(_) => Change::Changed,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Change::Closed,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return Vec::new(),
    };
    event.paths.iter().filter(relevant).cloned().map(change).collect()
}

/// Collects changes until they settle: [`QUIET`] after the last one ([`QUIET_REPLACED`]
/// when each was a file renamed into place or removed), at most [`MAX_DELAY`] after the
/// first, and not while a config file is open for writing (a half-written file can be
/// valid TOML that lacks half its services).
#[derive(Debug, Default)]
pub struct Settle {
    first: Option<Instant>,
    last: Option<Instant>,
    /// Whether a pending change may have left a file incomplete.
    partial: bool,
    writing: BTreeSet<PathBuf>,
}

impl Settle {
    pub fn note(&mut self, change: Change, now: Instant) {
        match &change {
            Change::Writing(p) => {
                self.writing.insert(p.clone());
            }
            Change::Closed(p) | Change::Gone(p) => {
                self.writing.remove(p);
            }
            // Lost events may have included the close.
            Change::Rescan => self.writing.clear(),
            Change::Changed(_) | Change::Replaced(_) => {}
        }
        self.partial |= !matches!(change, Change::Replaced(_) | Change::Gone(_));
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When to reload; `None` when nothing is pending or a file is being written.
    pub fn due(&self) -> Option<Instant> {
        if !self.writing.is_empty() {
            return None;
        }
        let quiet = if self.partial { QUIET } else { QUIET_REPLACED };
        Some((self.last? + quiet).min(self.first? + MAX_DELAY))
    }

    /// Config files open for writing, which hold the reload back.
    pub fn writing(&self) -> impl Iterator<Item = &Path> {
        self.writing.iter().map(PathBuf::as_path)
    }

    /// Forgets the pending changes (the reload has read them), not the files being written.
    pub fn reset(&mut self) {
        self.first = None;
        self.last = None;
        self.partial = false;
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind};

    use super::*;

    fn event(kind: EventKind, name: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from("/etc/iptproxy").join(name))
    }

    fn path(name: &str) -> PathBuf {
        PathBuf::from("/etc/iptproxy").join(name)
    }

    #[test]
    fn config_files_and_the_configmap_link_count_others_do_not() {
        let create = EventKind::Create(CreateKind::File);
        assert_eq!(classify(&event(create, "web.toml")), [Change::Changed(path("web.toml"))]);
        assert_eq!(classify(&event(create, "..data")), [Change::Changed(path("..data"))]);
        for ignored in [".web.toml.swp", "web.toml~", "#web.toml#", ".web.toml", "..data_tmp", "README", "4913"] {
            assert_eq!(classify(&event(create, ignored)), [], "{ignored}");
        }
    }

    #[test]
    fn an_editor_rename_over_the_file_is_a_change() {
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert_eq!(classify(&event(to, "web.toml")), [Change::Replaced(path("web.toml"))]);
        assert_eq!(classify(&event(from, "web.toml")), [Change::Gone(path("web.toml"))]);
        assert_eq!(classify(&event(to, "..data")), [Change::Replaced(path("..data"))]);
        let both = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path(path(".web.toml.tmp"))
            .add_path(path("web.toml"));
        assert_eq!(classify(&both), []);
    }

    #[test]
    fn writes_closes_removals_and_metadata() {
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(classify(&event(data, "a.toml")), [Change::Writing(path("a.toml"))]);
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(classify(&event(closed, "a.toml")), [Change::Closed(path("a.toml"))]);
        let removed = EventKind::Remove(RemoveKind::File);
        assert_eq!(classify(&event(removed, "a.toml")), [Change::Gone(path("a.toml"))]);
        let chmod = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions));
        assert_eq!(classify(&event(chmod, "a.toml")), [Change::Changed(path("a.toml"))]);
    }

    #[test]
    fn reads_are_not_changes_so_the_daemon_does_not_wake_itself() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert_eq!(classify(&event(kind, "a.toml")), []);
        }
    }

    #[test]
    fn lost_events_mean_rescan() {
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(classify(&overflow), [Change::Rescan]);
    }

    #[test]
    fn a_burst_settles_once_quiet_but_no_later_than_the_cap() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        assert_eq!(s.due(), None);
        s.note(Change::Changed(path("a.toml")), t0);
        assert_eq!(s.due(), Some(t0 + QUIET));
        let t1 = t0 + QUIET / 2;
        s.note(Change::Changed(path("b.toml")), t1);
        assert_eq!(s.due(), Some(t1 + QUIET), "each change restarts the quiet period");
        let late = t0 + MAX_DELAY - QUIET / 4;
        s.note(Change::Changed(path("c.toml")), late);
        assert_eq!(s.due(), Some(t0 + MAX_DELAY), "a never-ending stream still reloads");
        s.reset();
        assert_eq!(s.due(), None);
    }

    #[test]
    fn files_renamed_into_place_or_removed_settle_sooner_than_files_written() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        s.note(Change::Replaced(path("a.toml")), t0);
        assert_eq!(s.due(), Some(t0 + QUIET_REPLACED));
        let t1 = t0 + QUIET_REPLACED / 2;
        s.note(Change::Gone(path("b.toml")), t1);
        assert_eq!(s.due(), Some(t1 + QUIET_REPLACED), "a burst of renames is still one reload");
        s.note(Change::Changed(path("c.toml")), t1);
        assert_eq!(s.due(), Some(t1 + QUIET), "a file created or changed in place may be incomplete");
        s.reset();
        s.note(Change::Replaced(path("a.toml")), t1);
        assert_eq!(s.due(), Some(t1 + QUIET_REPLACED), "forgotten once reloaded");
        s.note(Change::Closed(path("a.toml")), t1);
        assert_eq!(s.due(), Some(t1 + QUIET));
    }

    #[test]
    fn a_file_open_for_writing_holds_the_reload_back_until_closed() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        s.note(Change::Changed(path("web.toml")), t0);
        s.note(Change::Writing(path("web.toml")), t0);
        assert_eq!(s.due(), None);
        assert_eq!(s.writing().collect::<Vec<_>>(), [path("web.toml").as_path()]);
        s.note(Change::Closed(path("web.toml")), t0 + MAX_DELAY * 3);
        assert_eq!(s.due(), Some(t0 + MAX_DELAY), "once closed, the reload is due");

        s.reset();
        s.note(Change::Writing(path("gone.toml")), t0);
        s.note(Change::Gone(path("gone.toml")), t0);
        assert!(s.due().is_some(), "a file removed while written no longer holds anything back");
        s.note(Change::Writing(path("x.toml")), t0);
        s.note(Change::Rescan, t0);
        assert!(s.due().is_some(), "after lost events nothing is known to be open");
    }
}
