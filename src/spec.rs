//! Rule specifications as text: quoting, splitting into arguments, and the canonical form
//! used to compare a rule we render with one `iptables-save` printed.

use std::borrow::Cow;

/// Quotes a string value the way `iptables-save` does (libxtables' `xtables_save_string`):
/// bare when it is only `[A-Za-z0-9_-]`, otherwise in double quotes with `"`, `\` and `'`
/// escaped.
pub fn quote(value: &str) -> Cow<'_, str> {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !value.is_empty() && value.chars().all(bare) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Cow::Owned(out)
}

/// Splits a rule specification into arguments as `iptables-restore` does: double quotes
/// group, a backslash inside quotes escapes the next character, nothing else is special.
/// An unterminated quote is an error.
pub fn split(spec: &str) -> Result<Vec<String>, &'static str> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let (mut in_quote, mut escaped, mut quoted) = (false, false, false);
    for c in spec.chars() {
        if in_quote {
            match (escaped, c) {
                (true, _) => {
                    cur.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => in_quote = false,
                (false, _) => cur.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                in_quote = true;
                quoted = true;
            }
            ' ' | '\t' | '\n' => {
                if !cur.is_empty() || quoted {
                    args.push(std::mem::take(&mut cur));
                }
                quoted = false;
            }
            _ => cur.push(c),
        }
    }
    if in_quote {
        return Err("unterminated quote");
    }
    if !cur.is_empty() || quoted {
        args.push(cur);
    }
    Ok(args)
}

/// Whether every quote in `spec` is closed, by the rules of [`split`], without splitting:
/// the save parser checks every rule, and most have no quote at all.
pub fn quotes_closed(spec: &str) -> bool {
    if !spec.contains('"') {
        return true;
    }
    let (mut in_quote, mut escaped) = (false, false);
    for b in spec.bytes() {
        match (in_quote, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => in_quote = !in_quote,
            _ => {}
        }
    }
    !in_quote
}

/// Joins arguments back into one line, quoting only what must be quoted.
pub fn join(args: &[String]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let plain = !arg.is_empty() && !arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\');
        if plain { out.push_str(arg) } else { out.push_str(&quote(arg)) }
    }
    out
}

/// A form of `spec` in which two specs that `iptables-restore` reads as the same arguments
/// are equal, whatever quoting they were printed with.
pub fn canonical(spec: &str) -> Cow<'_, str> {
    if !spec.contains('"') && !spec.contains("  ") {
        return Cow::Borrowed(spec);
    }
    match split(spec) {
        Ok(args) => Cow::Owned(join(&args)),
        Err(_) => Cow::Borrowed(spec),
    }
}

/// The jump (`-j`) or goto (`-g`) target of a rule, if it has one.
pub fn target(spec: &str) -> Option<String> {
    let args = split(spec).ok()?;
    let at = args.iter().position(|a| matches!(a.as_str(), "-j" | "--jump" | "-g" | "--goto"))?;
    args.get(at + 1).cloned()
}

/// The text of a rule's `--comment`, if it has one.
pub fn comment(spec: &str) -> Option<String> {
    let args = split(spec).ok()?;
    let at = args.iter().position(|a| a == "--comment")?;
    args.get(at + 1).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_iptables_save() {
        assert_eq!(quote("iptproxy"), "iptproxy");
        assert_eq!(quote("a_b-C9"), "a_b-C9");
        assert_eq!(quote("shop/web:80/tcp"), "\"shop/web:80/tcp\"");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("it's \"q\""), r#""it\'s \"q\"""#);
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn splits_like_iptables_restore() {
        let args = split(r#"-m comment --comment "it\'s \"q\"" -j RETURN"#).unwrap();
        assert_eq!(args, ["-m", "comment", "--comment", "it's \"q\"", "-j", "RETURN"]);
        assert_eq!(split("-s  1.2.3.4/32\t-j X").unwrap(), ["-s", "1.2.3.4/32", "-j", "X"]);
        assert_eq!(split(r#"--comment """#).unwrap(), ["--comment", ""]);
        assert!(split(r#"--comment "open"#).is_err());
    }

    #[test]
    fn quotes_closed_agrees_with_split() {
        for spec in [
            "",
            "-j X",
            r#"--comment "a b" -j X"#,
            r#"--comment "open"#,
            r#"--comment "a \" b""#,
            r#"--comment "a \""#,
            r#"--comment "a \\" -j X"#,
            r#"a"b"#,
            r#""""#,
            r#"""""#,
            r#"\""#,
            r#"x\" "y""#,
        ] {
            assert_eq!(quotes_closed(spec), split(spec).is_ok(), "{spec:?}");
        }
    }

    #[test]
    fn canonical_form_ignores_quoting() {
        let quoted = r#"-m comment --comment "shop/dns" -j X"#;
        let bare = "-m comment --comment shop/dns -j X";
        assert_eq!(canonical(quoted), canonical(bare));
        assert_ne!(canonical(r#"--comment "a b""#), canonical("--comment a b"));
        assert_eq!(join(&split(r#"--comment "a \"b\"""#).unwrap()), r#"--comment "a \"b\"""#);
    }

    #[test]
    fn finds_comments() {
        assert_eq!(
            comment(r#"-m comment --comment "shop/web:80/tcp -> x" -j Y"#).as_deref(),
            Some("shop/web:80/tcp -> x")
        );
        assert_eq!(comment("-j Y"), None);
    }

    #[test]
    fn finds_targets() {
        assert_eq!(
            target("-m comment --comment \"x -j Y\" -j IPTPROXY-SERVICES").as_deref(),
            Some("IPTPROXY-SERVICES")
        );
        assert_eq!(target("-g DOCKER").as_deref(), Some("DOCKER"));
        assert_eq!(target("-s 1.2.3.4/32"), None);
        assert_eq!(target(""), None);
    }
}
