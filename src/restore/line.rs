//! What the script writer lets into a line of `iptables-restore` input.
//!
//! iptables-restore reads its input a line at a time and splits each line into arguments
//! itself: double quotes group, a backslash escapes inside quotes, and a closing quote ends
//! an argument even when no space follows (`"a"b` is two arguments). Every string that
//! reaches a line (a chain name, a rendered rule, a rule read back from the kernel) passes
//! [`check_line`] first, so no input can end a line early, open a quote that swallows the
//! rest, slip in a second command, or outgrow the tool's buffers. This does not rest on
//! the config's own validation; it is the last gate before the kernel.

/// Longer lines are refused: far above any rule iptproxy writes, well below the tool's buffers.
pub const MAX_LINE: usize = 4096;
/// libxtables refuses an argument of 1024 bytes or more ("Parameter too long!").
pub const MAX_ARG: usize = 1023;
/// libxtables' argv holds 255 entries, the program name included.
pub const MAX_ARGS: usize = 250;

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    #[error("a control character ({0:?})")]
    Control(char),
    #[error("a non-ASCII character ({0:?})")]
    NonAscii(char),
    #[error("an unterminated quote")]
    OpenQuote,
    #[error("a quote that does not stand between spaces (the tool would split the argument there)")]
    GluedQuote,
    #[error("the command {0} inside a rule")]
    Command(String),
    #[error("a line of {0} bytes (at most {MAX_LINE})")]
    LineTooLong(usize),
    #[error("an argument of {0} bytes (at most {MAX_ARG})")]
    ArgTooLong(usize),
    #[error("{0} arguments (at most {MAX_ARGS})")]
    TooManyArgs(usize),
    #[error("an invalid chain name (1 to 28 of A-Z a-z 0-9 _ -, not starting with -)")]
    ChainName,
    #[error("an invalid table name")]
    TableName,
}

/// A chain name as iptproxy writes it: 1 to 28 of `[A-Za-z0-9_-]`, not starting with `-`.
pub fn check_chain(name: &str) -> Result<(), Unsafe> {
    let ok = !name.is_empty()
        && name.len() <= crate::chains::MAX_NAME
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(Unsafe::ChainName) }
}

/// A table name: `nat`, `filter`, `mangle`, ...
pub fn check_table(name: &str) -> Result<(), Unsafe> {
    let ok = !name.is_empty() && name.len() <= 31 && name.bytes().all(|b| b.is_ascii_lowercase());
    if ok { Ok(()) } else { Err(Unsafe::TableName) }
}

/// A whole command line (`-A CHAIN spec...`): printable ASCII only, quotes balanced and
/// standing alone, within the tool's limits, and only one command: its first word.
pub fn check_line(line: &str) -> Result<(), Unsafe> {
    if line.len() > MAX_LINE {
        return Err(Unsafe::LineTooLong(line.len()));
    }
    if let Some(c) = line.chars().find(|c| !c.is_ascii()) {
        return Err(Unsafe::NonAscii(c));
    }
    if let Some(c) = line.chars().find(|c| c.is_ascii_control()) {
        return Err(Unsafe::Control(c));
    }
    let args = split_strict(line)?;
    if args.len() > MAX_ARGS {
        return Err(Unsafe::TooManyArgs(args.len()));
    }
    if let Some(a) = args.iter().find(|a| a.len() > MAX_ARG) {
        return Err(Unsafe::ArgTooLong(a.len()));
    }
    for (i, arg) in args.iter().enumerate().skip(1) {
        // The value of `--comment` is free text; iptables takes it whatever it looks like.
        if is_command(arg) && args[i - 1] != "--comment" {
            return Err(Unsafe::Command(arg.clone()));
        }
    }
    Ok(())
}

/// Splits like [`crate::spec::split`], but refuses quoting where the two could disagree
/// with the tool: a quote must open after a space (or at the start) and close before one
/// (or at the end).
fn split_strict(line: &str) -> Result<Vec<String>, Unsafe> {
    let bytes = line.as_bytes();
    let (mut in_quote, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_quote {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_quote = false;
                    if bytes.get(i + 1).is_some_and(|&n| n != b' ') {
                        return Err(Unsafe::GluedQuote);
                    }
                }
                _ => {}
            }
        } else if b == b'"' {
            if i > 0 && bytes[i - 1] != b' ' {
                return Err(Unsafe::GluedQuote);
            }
            in_quote = true;
        }
    }
    if in_quote {
        return Err(Unsafe::OpenQuote);
    }
    crate::spec::split(line).map_err(|_| Unsafe::OpenQuote)
}

/// iptables' commands, short and long; getopt also takes any unambiguous prefix of a long
/// option (`--app` is `--append`), so those count too.
fn is_command(arg: &str) -> bool {
    const SHORT: &str = "ACDILSFZNXPEthV";
    const LONG: [&str; 17] = [
        "append",
        "check",
        "delete",
        "insert",
        "replace",
        "list",
        "list-rules",
        "flush",
        "zero",
        "new-chain",
        "delete-chain",
        "policy",
        "rename-chain",
        "table",
        "help",
        "version",
        "restore",
    ];
    if let Some(long) = arg.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        return !name.is_empty() && LONG.iter().any(|l| l.starts_with(name));
    }
    match arg.strip_prefix('-') {
        // `-A`, and bundled flags such as `-4A` that getopt reads as `-4 -A`; not `-1`.
        Some(flags) if !flags.bytes().all(|b| b.is_ascii_digit()) => flags.chars().any(|c| SHORT.contains(c)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_renderer_writes() {
        for line in [
            "-A IPTPROXY-SVC-X -m comment --comment \"shop/web:80/tcp -> 198.19.0.2:8080\" -m statistic --mode random --probability 0.50000000000 -j IPTPROXY-SEP-Y",
            "-I PREROUTING 1 -m comment --comment \"iptproxy service portals\" -j IPTPROXY-SERVICES",
            "-D IPTPROXY-SVC-X 4",
            "-A X -m comment --comment \"it\\'s \\\"q\\\"\" -j RETURN",
            "-A X -m comment --comment \"\" -j RETURN",
            "-A X -m comment --comment -A -j RETURN",
            "-A X -s 198.18.0.0/15 -j MARK --set-xmark 0x4000/0x4000",
        ] {
            assert_eq!(check_line(line), Ok(()), "{line}");
        }
    }

    #[test]
    fn refuses_what_could_add_a_line_an_argument_or_a_command() {
        for (line, problem) in [
            ("-A X -j Y\n-A Z -j ACCEPT", Unsafe::Control('\n')),
            ("-A X -j Y\rCOMMIT", Unsafe::Control('\r')),
            ("-A X -j Y\0", Unsafe::Control('\0')),
            ("-A X\t-j Y", Unsafe::Control('\t')),
            ("-A X -m comment --comment \"é\"", Unsafe::NonAscii('é')),
            ("-A X -m comment --comment \"open -j ACCEPT", Unsafe::OpenQuote),
            ("-A X -m comment --comment \"a\"b", Unsafe::GluedQuote),
            ("-A X -m comment --comment a\"b c\"", Unsafe::GluedQuote),
            ("-A X -j ACCEPT -D X 1", Unsafe::Command("-D".into())),
            ("-A X -j ACCEPT --appe X", Unsafe::Command("--appe".into())),
            ("-A X -4A X", Unsafe::Command("-4A".into())),
            ("-A X -t filter", Unsafe::Command("-t".into())),
            ("-A X --table=nat", Unsafe::Command("--table=nat".into())),
        ] {
            assert_eq!(check_line(line), Err(problem), "{line:?}");
        }
        assert_eq!(check_line(&format!("-A X {}", "-j Y ".repeat(900))), Err(Unsafe::LineTooLong(4505)));
        assert_eq!(check_line(&format!("-A X --comment {}", "a".repeat(1024))), Err(Unsafe::ArgTooLong(1024)));
        assert_eq!(check_line(&format!("-A X{}", " -j".repeat(250))), Err(Unsafe::TooManyArgs(252)));
    }

    #[test]
    fn options_that_are_not_commands_pass() {
        for arg in ["-s", "-d", "-p", "-m", "-j", "-g", "-i", "-o", "!", "-1", "--dport", "--to-destination", "--mode"]
        {
            assert!(!is_command(arg), "{arg}");
        }
    }

    #[test]
    fn chain_and_table_names() {
        for ok in ["IPTPROXY-SVC-R6PTLJMTZGJY3EG", "PREROUTING", "a_b-c"] {
            assert_eq!(check_chain(ok), Ok(()));
        }
        for bad in ["", "-X", "A B", "A\nB", "A\"B", "IPTPROXY-SVC-R6PTLJMTZGJY3EGX", "É"] {
            assert_eq!(check_chain(bad), Err(Unsafe::ChainName), "{bad:?}");
        }
        assert_eq!(check_table("nat"), Ok(()));
        assert_eq!(check_table("nat\nCOMMIT"), Err(Unsafe::TableName));
    }
}
