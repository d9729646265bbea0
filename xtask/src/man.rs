//! The man pages: `iptproxy(1)` and a page per subcommand, `iptproxyd(8)` and
//! `iptproxy.toml(5)`. The command pages come from the clap definitions (clap_mangen); the
//! config page from the config reference table. The prose added here covers what neither
//! can say: exit codes, signals, files, how the pieces fit.

use clap::CommandFactory;
use clap_mangen::Man;
use iptproxy::cli::{Cli, DaemonCli};
use iptproxy::config::reference::{Section, WhenAbsent};
use roff::{Roff, bold, italic, roman};

/// One man page: its file name (`iptproxy.toml.5`) and its roff source.
pub struct Page {
    pub file: String,
    pub text: String,
}

const MANUAL: &str = "iptproxy manual";

fn man(cmd: clap::Command, section: &str) -> Man {
    Man::new(cmd).section(section).date(crate::date()).manual(MANUAL).source(format!("iptproxy {}", crate::version()))
}

/// Every page, rendered.
pub fn pages() -> Vec<Page> {
    let mut pages = vec![iptproxy_1(), iptproxyd_8(), iptproxy_toml_5()];
    let mut cli = Cli::command().disable_help_subcommand(true);
    // Builds the subcommands' display names (`iptproxy-plan`) and usage lines.
    cli.build();
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = man(sub.clone(), "1");
        let mut text = Vec::new();
        render(&page, &mut text, |r| see_also(r, &[("iptproxy", "1"), ("iptproxy.toml", "5")]));
        pages.push(Page { file: page.get_filename(), text: String::from_utf8_lossy(&text).into_owned() });
    }
    pages
}

/// clap_mangen's sections, then `extra`'s.
fn render(page: &Man, out: &mut Vec<u8>, extra: impl FnOnce(&mut Roff)) {
    // Writing to a Vec cannot fail.
    let _ = page.render(out);
    let mut roff = Roff::new();
    extra(&mut roff);
    // Roff::render repeats its preamble; the page already has it.
    out.extend_from_slice(roff.to_roff().as_bytes());
}

fn heading(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

fn para(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.text([roman(text)]);
}

/// A tagged paragraph: `tag` in bold, then the text indented below it.
fn item(roff: &mut Roff, tag: &str, text: &str) {
    roff.control("TP", []);
    roff.text([bold(tag)]);
    roff.text([roman(text)]);
}

fn see_also(roff: &mut Roff, pages: &[(&str, &str)]) {
    heading(roff, "SEE ALSO");
    let mut inlines = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            inlines.push(roman(", "));
        }
        inlines.push(bold(*name));
        inlines.push(roman(format!("({section})")));
    }
    roff.text(inlines);
}

fn example(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.control("nf", []);
    roff.control("RS", ["4"]);
    roff.text([roman(text.trim_end())]);
    roff.control("RE", []);
    roff.control("fi", []);
}

fn iptproxy_1() -> Page {
    let page = man(Cli::command().disable_help_subcommand(true), "1");
    let mut text = Vec::new();
    render(&page, &mut text, |r| {
        heading(r, "EXIT STATUS");
        item(r, "0", "Success. For plan --detailed-exitcode: nothing to change.");
        item(r, "1", "An error: an invalid configuration (nothing was changed), or iptables failed.");
        item(r, "2", "A usage error. For plan --detailed-exitcode: there are changes to apply.");
        heading(r, "ENVIRONMENT");
        item(r, "IPTPROXY_CONFIG_DIR", "The config directory, when -c is not given.");
        item(r, "RUST_LOG", "Log filter (error, warn, info, debug), overriding -v.");
        files(r);
        heading(r, "EXAMPLES");
        example(
            r,
            "$ sudo iptproxy check\n$ sudo iptproxy plan\n$ sudo iptproxy apply\n$ sudo iptproxy plan --detailed-exitcode",
        );
        para(r, "The daemon, iptproxyd(8), keeps the rules applied; iptproxy plan shows what it would change.");
        see_also(r, &[("iptproxyd", "8"), ("iptproxy.toml", "5"), ("iptables", "8"), ("iptables-save", "8")]);
    });
    Page { file: page.get_filename(), text: String::from_utf8_lossy(&text).into_owned() }
}

fn files(r: &mut Roff) {
    heading(r, "FILES");
    item(r, "/etc/iptproxy/*.toml", "The configuration, read in name order; see iptproxy.toml(5).");
    item(r, "/run/iptproxy/state.json", "The daemon's state: what it applied, when, and the last error.");
    item(r, "/usr/share/doc/iptproxy/examples/", "Commented example configurations to copy.");
}

fn iptproxyd_8() -> Page {
    let page = man(DaemonCli::command(), "8");
    let mut text = Vec::new();
    render(&page, &mut text, |r| {
        heading(r, "OPERATION");
        para(
            r,
            "iptproxyd loads the configuration, applies it with the smallest change to the live rules, and then keeps \
             them equal to the files: it applies every edit of /etc/iptproxy/*.toml, checks its empty canary chain \
             in every table it uses (settings.canary_interval) to notice at once when another program flushed a \
             table, and re-reads all live rules every settings.resync_interval to repair any other drift. Only \
             chains named IPTPROXY-* and its own jump rules in the built-in chains are ever changed.",
        );
        para(
            r,
            "An invalid edit is not applied: the error, with file and line, goes to the journal and the rules stay \
             as they were until the files are valid again.",
        );
        heading(r, "SIGNALS");
        item(r, "SIGHUP", "Re-read the configuration and reconcile it with the live rules (systemctl reload).");
        item(
            r,
            "SIGTERM, SIGINT",
            "Exit with status 0 and leave the rules in place, so that services keep working while the daemon is \
             stopped or upgraded. To remove them, run iptproxy cleanup.",
        );
        heading(r, "SYSTEMD");
        para(
            r,
            "iptproxyd runs as a Type=notify service (iptproxyd.service): it reports ready once the first apply is \
             done, keeps a one-line status (systemctl status iptproxyd) and pings the watchdog when WatchdogSec= is \
             set. The unit is sandboxed: only CAP_NET_ADMIN and CAP_NET_RAW, a read-only file system apart from \
             /run/iptproxy and /run/xtables.lock, and a system-call filter. It relies on the kernel loading netfilter \
             modules on demand; on a host that forbids that, load them at boot with modules-load.d(5).",
        );
        files(r);
        see_also(r, &[("iptproxy", "1"), ("iptproxy.toml", "5"), ("systemctl", "1"), ("journalctl", "1")]);
    });
    Page { file: page.get_filename(), text: String::from_utf8_lossy(&text).into_owned() }
}

fn iptproxy_toml_5() -> Page {
    let mut r = Roff::new();
    r.control("TH", ["iptproxy.toml", "5", &crate::date(), &format!("iptproxy {}", crate::version()), MANUAL]);
    heading(&mut r, "NAME");
    r.text([roman("iptproxy.toml - iptproxy service configuration")]);
    heading(&mut r, "SYNOPSIS");
    r.text([bold("/etc/iptproxy/*.toml")]);
    heading(&mut r, "DESCRIPTION");
    para(
        &mut r,
        "iptproxy(1) and iptproxyd(8) read every *.toml file in the config directory (/etc/iptproxy, or -c), in \
         name order, and merge them. Hidden files and editor temporaries (.web.toml.swp, web.toml~, #web.toml#) are \
         skipped. A file holds at most one [settings] table, in one file only, and any number of [[service]] \
         tables. Unknown keys are errors. Every error names the file, the line and the field, and an invalid \
         configuration changes nothing.",
    );
    para(
        &mut r,
        "Each key below gives its type and its default: the value used when the key is left out. \"required\" \
         keys must be given; \"none\" means the feature is off.",
    );
    for section in Section::ALL {
        heading(&mut r, section_title(section));
        para(&mut r, section_intro(section));
        for key in section.keys() {
            r.control("TP", []);
            r.text([bold(key.name)]);
            let default = match key.default {
                WhenAbsent::Value(v) => v.to_string(),
                other => other.to_string(),
            };
            r.text([italic(key.kind), roman("; default: "), bold(default)]);
            r.control("br", []);
            r.text([roman(key.doc)]);
        }
    }
    heading(&mut r, "DURATIONS");
    para(
        &mut r,
        "Durations are strings of whole seconds with a unit: \"90s\", \"5m\", \"3h\", \"1d\", or combined: \
         \"1h 30m\".",
    );
    heading(&mut r, "UNIQUENESS");
    para(
        &mut r,
        "Service names, the address, port and protocol each service answers on (VIP and external IPs), and node \
         ports per protocol and family must be unique across all files. A conflict names both files.",
    );
    heading(&mut r, "EXAMPLE");
    example(&mut r, include_str!("../../examples/web.toml"));
    para(&mut r, "More commented examples are installed under /usr/share/doc/iptproxy/examples/.");
    heading(&mut r, "FILES");
    item(&mut r, "/etc/iptproxy/", "The config directory. The package installs it empty.");
    see_also(&mut r, &[("iptproxy", "1"), ("iptproxyd", "8")]);
    Page { file: "iptproxy.toml.5".into(), text: r.render() }
}

fn section_title(section: Section) -> &'static str {
    match section {
        Section::Settings => "SETTINGS",
        Section::Service => "SERVICES",
        Section::Endpoint => "ENDPOINTS",
    }
}

fn section_intro(section: Section) -> &'static str {
    match section {
        Section::Settings => "The [settings] table, in at most one file. Every key is optional.",
        Section::Service => {
            "Each [[service]] table is one service: a virtual IP, port and protocol, and its endpoints."
        }
        Section::Endpoint => {
            "An endpoint is a string, \"198.19.0.2:8080\", \"[2001:db8::2]:8080\" or an address alone (the \
             service's port), or an inline table with these keys, for example { address = \"198.19.0.4\", port = \
             8080, weight = 2 }."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iptproxy::config::reference::KEYS;

    fn page(file: &str) -> String {
        pages().into_iter().find(|p| p.file == file).map(|p| p.text).unwrap_or_else(|| panic!("no page {file}"))
    }

    /// The text of a page as a reader sees it, near enough: roff's escapes undone.
    fn plain(roff: &str) -> String {
        roff.replace("\\-", "-").replace("\\fB", "").replace("\\fI", "").replace("\\fR", "").replace("\\*(Aq", "'")
    }

    #[test]
    fn there_is_a_page_for_each_program_the_config_and_each_subcommand() {
        let files: Vec<String> = pages().into_iter().map(|p| p.file).collect();
        for f in ["iptproxy.1", "iptproxyd.8", "iptproxy.toml.5", "iptproxy-plan.1", "iptproxy-cleanup.1"] {
            assert!(files.iter().any(|x| x == f), "{f} missing from {files:?}");
        }
    }

    #[test]
    fn the_config_page_documents_every_key_with_its_default() {
        let text = plain(&page("iptproxy.toml.5"));
        for key in KEYS {
            let default = match key.default {
                WhenAbsent::Value(v) => v.to_string(),
                other => other.to_string(),
            };
            let entry = format!(".TP\n{}\n{}; default: {}\n", key.name, key.kind, default);
            assert!(text.contains(&entry), "{} is not documented as\n{entry}", key.name);
        }
    }

    #[test]
    fn the_command_pages_come_from_the_clap_definitions() {
        let plan = plain(&page("iptproxy-plan.1"));
        assert!(plan.contains("--detailed-exitcode"), "{plan}");
        let main = plain(&page("iptproxy.1"));
        assert!(main.contains("IPTPROXY_CONFIG_DIR") && main.contains("--backend"), "{main}");
        let daemon = plain(&page("iptproxyd.8"));
        assert!(daemon.contains(".TH iptproxyd 8 "), "{daemon}");
        assert!(daemon.contains("SIGHUP") && daemon.contains("--config-dir"), "{daemon}");
    }
}

/// The README's configuration tables must say what the reference says.
#[cfg(test)]
mod readme {
    use iptproxy::config::reference::{Section, WhenAbsent};

    const README: &str = include_str!("../../README.md");

    /// The `| key | default | meaning |` rows of the table under `heading`.
    fn table(heading: &str) -> Vec<(String, String)> {
        let rest = README.split_once(heading).map(|(_, r)| r).unwrap_or_else(|| panic!("no {heading} in README"));
        rest.lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|row| {
                let cells: Vec<&str> = row.split(" | ").collect();
                let key = cells[0].trim_start_matches("| ").trim_matches('`').to_string();
                (key, cells[1].trim_matches('`').to_string())
            })
            .collect()
    }

    fn reference(section: Section) -> Vec<(String, String)> {
        section
            .keys()
            .map(|k| {
                let default = match k.default {
                    WhenAbsent::Value(v) => v.to_string(),
                    other => other.to_string(),
                };
                (k.name.to_string(), default)
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_settings_key_with_its_default() {
        assert_eq!(table("### `[settings]`"), reference(Section::Settings));
    }

    #[test]
    fn the_readme_lists_every_service_key_with_its_default() {
        assert_eq!(table("### `[[service]]`"), reference(Section::Service));
    }
}
