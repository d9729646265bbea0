//! Logging for every iptproxy program: `log` + `env_logger`, `RUST_LOG` first.
//!
//! Under systemd, when stderr is the journal (`JOURNAL_STREAM` names it), each line is
//! `<N>message`: journald reads the syslog priority `N` from the prefix and stamps the time
//! itself, so levels show right in `journalctl -p` and no timestamp is doubled.

use std::io::Write;

/// Starts logging at `default_level` (`warn`, `info`, ...) unless `RUST_LOG` says otherwise.
pub fn init(default_level: &str) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    if stderr_is_journal() {
        builder.format(|buf, record| writeln!(buf, "<{}>{}", priority(record.level()), record.args()));
    }
    builder.init();
}

/// The syslog priority of a log level, as `sd-daemon(3)` prefixes define them.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is the journal stream systemd set up: `JOURNAL_STREAM` is `DEV:INODE` of
/// that stream, and is checked against stderr itself because a child whose stderr was
/// redirected inherits the variable too.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let stderr = std::io::stderr();
    let Ok(fd) = stderr.as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    names_stream(&value.to_string_lossy(), meta.dev(), meta.ino())
}

/// Whether a `JOURNAL_STREAM` value names the stream with this device and inode.
pub fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Debug), 7);
        assert_eq!(priority(log::Level::Trace), 7);
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("8", 8, 12345));
        assert!(!names_stream("", 0, 0));
    }
}
