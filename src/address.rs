//! Extracting the mailbox address from a `From:` header value (RFC 5322
//! §3.4), enough to choose a key and to compare with certificates.

/// The addresses in an address-list header value, in order; display names,
/// comments, quoting and group syntax are removed. Domains are lower-cased;
/// local parts are kept as written (RFC 5321 §2.4).
pub fn parse_address_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    for item in split_top_level(value) {
        if let Some(a) = parse_mailbox(item) {
            out.push(a);
        }
    }
    out
}

/// The single address of a `From:` value; `None` when there is not exactly one.
pub fn single_address(value: &str) -> Option<String> {
    let mut all = parse_address_list(value);
    if all.len() == 1 {
        all.pop()
    } else {
        None
    }
}

/// Splits at commas (and group colons/semicolons) outside quotes, comments and
/// angle brackets.
fn split_top_level(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth_comment, mut in_quote, mut in_angle, mut escape) = (0usize, false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escape {
            escape = false;
            continue;
        }
        match c {
            '\\' if in_quote || depth_comment > 0 => escape = true,
            '"' if depth_comment == 0 => in_quote = !in_quote,
            '(' if !in_quote => depth_comment += 1,
            ')' if !in_quote && depth_comment > 0 => depth_comment -= 1,
            '<' if !in_quote && depth_comment == 0 => in_angle = true,
            '>' if !in_quote && depth_comment == 0 => in_angle = false,
            ',' | ';' | ':' if !in_quote && depth_comment == 0 && !in_angle => {
                // A group's display name ends with ':'; drop it.
                if c != ':' {
                    parts.push(&value[start..i]);
                }
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// Removes comments and turns quoted strings into their content.
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let (mut depth, mut in_quote, mut escape) = (0usize, false, false);
    for c in s.chars() {
        if escape {
            escape = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' if in_quote || depth > 0 => escape = true,
            '"' if depth == 0 => {
                in_quote = !in_quote;
                out.push(c);
            }
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn parse_mailbox(item: &str) -> Option<String> {
    let s = strip_comments(item);
    let addr = match (s.rfind('<'), s.rfind('>')) {
        (Some(l), Some(r)) if l < r => s[l + 1..r].trim().to_string(),
        _ => s.trim().to_string(),
    };
    // Drop an obsolete source route (<@a,@b:user@dom>).
    let addr = match addr.rsplit_once(':') {
        Some((_, a)) if addr.starts_with('@') => a.to_string(),
        _ => addr,
    };
    let (local, domain) = addr.rsplit_once('@')?;
    let local = local.trim();
    let domain = domain.trim().trim_end_matches('.');
    if local.is_empty() || domain.is_empty() || domain.contains(char::is_whitespace) {
        return None;
    }
    // A quoted local part that needs no quoting is the same address unquoted.
    let local = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner)
            if !inner.contains([
                ' ', '"', '\\', '@', ',', ';', ':', '<', '>', '(', ')', '[', ']',
            ]) =>
        {
            inner
        }
        _ => local,
    };
    if local.contains(char::is_whitespace) && !local.starts_with('"') {
        return None;
    }
    Some(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// Case-insensitive in the domain, exact in the local part (RFC 8550 §3).
pub fn same_address(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => false,
    }
}

/// The domain part, lower case.
pub fn domain_of(addr: &str) -> Option<String> {
    addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_forms() {
        let cases = [
            ("alice@example.com", "alice@example.com"),
            ("Alice <alice@Example.COM>", "alice@example.com"),
            ("\"Smith, Alice\" <alice@example.com>", "alice@example.com"),
            ("alice@example.com (Alice Smith)", "alice@example.com"),
            (
                "(comment <evil@x.test>) Alice <alice@example.com>",
                "alice@example.com",
            ),
            (
                "=?utf-8?q?J=C3=BCrgen?= <juergen@example.de>",
                "juergen@example.de",
            ),
            (" <alice@example.com> ", "alice@example.com"),
            ("\"alice\"@example.com", "alice@example.com"),
            ("Alice <@relay.test:alice@example.com>", "alice@example.com"),
        ];
        for (input, want) in cases {
            assert_eq!(single_address(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn local_part_case_is_kept() {
        assert_eq!(
            single_address("Alice@Example.com").unwrap(),
            "Alice@example.com"
        );
    }

    #[test]
    fn several_or_no_addresses_are_not_a_single_from() {
        assert_eq!(single_address("a@example.com, b@example.com"), None);
        assert_eq!(single_address("undisclosed-recipients:;"), None);
        assert_eq!(single_address(""), None);
        assert_eq!(single_address("Alice"), None);
        assert_eq!(single_address("<>"), None);
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        let v = parse_address_list("\"a, b\" <a@x.test>, Group: c@y.test, d@z.test;");
        assert_eq!(v, vec!["a@x.test", "c@y.test", "d@z.test"]);
    }

    #[test]
    fn address_comparison() {
        assert!(same_address("alice@EXAMPLE.com", "alice@example.COM"));
        assert!(!same_address("Alice@example.com", "alice@example.com"));
        assert!(!same_address("alice", "alice"));
    }
}
