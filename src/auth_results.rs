//! The Authentication-Results header (RFC 8601) with the `smime` method of
//! RFC 7281: building ours, safe to emit whatever the certificate says, and
//! spotting headers a reader could take for ours (doc/inbound-verdicts.md §8).

use crate::verify::Verdict;

/// Characters a reader does not display: inside an authserv-id they make
/// `mx.example.com` look like ours when the bytes say otherwise.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}')
}

/// The text before the first `;` outside comments and quotes, with the
/// comments removed (nested, with quoted-pairs) and the quotes dropped.
fn id_region(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(256));
    let (mut depth, mut quoted, mut escape) = (0usize, false, false);
    for c in value.chars() {
        if escape {
            escape = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escape = true,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                // A comment separates like white space does.
                if depth == 0 {
                    out.push(' ');
                }
            }
            _ if depth > 0 => {}
            '"' => quoted = !quoted,
            ';' if !quoted => break,
            _ => out.push(c),
        }
    }
    out
}

/// The id as a reader resolves a domain (UTS #46: full-width letters,
/// ideographic full stops, compatibility forms such as `ſ` map to ASCII),
/// lower case, without trailing dots.
fn normal_id(s: &str) -> String {
    let mapped = if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(s).unwrap_or_else(|_| s.to_lowercase())
    };
    mapped.trim_end_matches('.').to_string()
}

/// The authserv-id as a strict reader takes it: the first token after any
/// comments and white space (RFC 8601 §2.2), lower case.
pub fn authserv_id(value: &str) -> Option<String> {
    let region = id_region(value);
    let first = region.split_whitespace().next()?;
    Some(first.to_ascii_lowercase())
}

/// Whether a reader could take this Authentication-Results value for ours:
/// comments, folding, white space and invisible characters inside the id,
/// quotes and trailing dots are ignored, and so is a version number after
/// it. Compared without case.
pub fn claims_our_id(value: &str, ours: &str) -> bool {
    let ours = normal_id(ours);
    if ours.is_empty() {
        return false;
    }
    let region: String = id_region(value)
        .chars()
        .filter(|c| !is_invisible(*c))
        .collect();
    let words: Vec<&str> = region.split_whitespace().collect();
    let Some(first) = words.first() else {
        return false;
    };
    if normal_id(first) == ours {
        return true;
    }
    // Folding or white space inside the id: the words read together.
    let mut n = words.len();
    if n > 1 && words[n - 1].bytes().all(|b| b.is_ascii_digit()) {
        n -= 1;
    }
    normal_id(&words[..n].concat()) == ours || normal_id(&words.concat()) == ours
}

/// RFC 8601 ptext characters that need no quoting (RFC 2045 token, plus
/// `@` and `/` for addresses and types).
fn is_token_char(c: u8) -> bool {
    (c > b' ' && c < 0x7f && !b"()<>,;:\\\"[]?=".contains(&c)) || c == b'@' || c == b'/'
}

/// An RFC 8601 pvalue: a token (or an address of token characters) as is,
/// else a quoted-string. `None` for text that is not printable ASCII: such
/// a value cannot be shown faithfully, and no From can match it anyway.
fn pvalue(s: &str) -> Option<String> {
    if s.is_empty() || !s.bytes().all(|c| (b' '..0x7f).contains(&c)) {
        return None;
    }
    if s.bytes().all(is_token_char) && s.matches('@').count() <= 1 {
        return Some(s.to_string());
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    Some(q)
}

/// A comment's text: printable ASCII with nothing that could end it.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\') || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Longest property we write: with `body.smime-issuer=` and folding, a
/// line stays far below the 998 octets of RFC 5322 §2.1.1.
const MAX_PROPERTY: usize = 900;

/// Folds `items` into lines of at most 78 columns where they fit: each
/// line break is LF plus a space (the MTA writes it as CRLF), so that the
/// unfolded value has one space between items.
fn fold(first: &str, items: &[String]) -> String {
    // "Authentication-Results: " takes the first 24 columns.
    let mut out = String::from(first);
    let mut col = 24 + first.len();
    for it in items {
        if col + 1 + it.len() > 78 {
            out.push_str("\n ");
            col = 1;
        } else {
            out.push(' ');
            col += 1;
        }
        out.push_str(it);
        col += it.len();
    }
    out
}

/// The header value: `id; smime=result (reason) body.smime-identifier=...`,
/// folded, printable ASCII only.
pub fn header_value(authserv_id: &str, v: &Verdict) -> String {
    let mut items = Vec::new();
    items.push(format!("smime={}", v.result));
    if let Some(r) = &v.reason {
        items.push(format!("({})", comment(r)));
    }
    let prop = |name: &str, value: &str| -> Option<String> {
        let pv = pvalue(value)?;
        (pv.len() <= MAX_PROPERTY).then(|| format!("body.smime-{name}={pv}"))
    };
    if let Some(id) = v
        .identifier
        .as_deref()
        .and_then(|id| prop("identifier", id))
    {
        items.push(id);
    }
    items.extend(prop("part", &v.part));
    // RFC 7281: serial and issuer go together.
    if let (Some(serial), Some(issuer)) = (&v.serial, &v.issuer) {
        if let (Some(s), Some(i)) = (prop("serial", serial), prop("issuer", issuer)) {
            items.push(s);
            items.push(i);
        }
    }
    fold(&format!("{authserv_id};"), &items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::SmimeResult;

    #[test]
    fn authserv_id_in_every_spelling() {
        for v in [
            "mx.example.com; smime=pass",
            "MX.Example.COM; smime=pass",
            "  mx.example.com ;smime=pass",
            "(forged (nested)) mx.example.com; smime=pass",
            "\r\n\tmx.example.com;\r\n\tsmime=pass",
            "mx.example.com 1; smime=pass",
            "\"mx.example.com\"; smime=pass",
            "mx.example.com(comment); smime=pass",
            // What a reader still shows as our id.
            "mx.example.com.; smime=pass",
            "mx.example.com..; smime=pass",
            "mx.example(x).com; smime=pass",
            "mx.example\r\n\t.com; smime=pass",
            "mx.example .com 1; smime=pass",
            "mx.exa\u{200B}mple.com; smime=pass",
            "\u{FEFF}mx.example.com\u{00AD}; smime=pass",
            "mx.example.com smime=pass",
            "mx.example.com",
            // What IDNA (UTS #46) maps to ours.
            "\u{ff4d}\u{ff58}.example.com; smime=pass",
            "mx\u{3002}example\u{3002}com; smime=pass",
            "mx.example.com\u{ff0e}; smime=pass",
            "mx.example.co\u{1d5c6}; smime=pass",
        ] {
            assert!(claims_our_id(v, "mx.example.com"), "{v:?}");
        }
        for v in [
            "other.example.com; smime=pass",
            "mx.example.com.evil; smime=pass",
            "evil.mx.example.com; smime=pass",
            "; smime=pass",
            "",
            "(\\",
            "(a\\",
            "(mx.example.com) other.example; smime=pass",
        ] {
            assert!(!claims_our_id(v, "mx.example.com"), "{v:?}");
        }
    }

    fn verdict(reason: Option<&str>, id: Option<&str>, issuer: &str) -> Verdict {
        Verdict {
            protected: None,
            result: SmimeResult::Pass,
            reason: reason.map(str::to_string),
            identifier: id.map(str::to_string),
            part: "1".into(),
            serial: Some("1E".into()),
            issuer: Some(issuer.into()),
            signer: None,
        }
    }

    #[test]
    fn header_with_all_properties_folded() {
        let v = verdict(
            None,
            Some("alice@example.com"),
            "CN=NSS Test CA (RSA),O=BOGUS NSS",
        );
        assert_eq!(
            header_value("mx.example.com", &v),
            "mx.example.com; smime=pass\n body.smime-identifier=alice@example.com \
             body.smime-part=1\n body.smime-serial=1E \
             body.smime-issuer=\"CN=NSS Test CA (RSA),O=BOGUS NSS\""
        );
    }

    #[test]
    fn reasons_cannot_break_out_of_the_comment() {
        let mut v = verdict(Some("bad) smime=pass (x\r\nX: y\0\u{e9}"), None, "x");
        v.result = SmimeResult::Fail;
        let h = header_value("mx", &v);
        assert!(
            h.starts_with("mx; smime=fail (bad? smime=pass ?x??X: y??)"),
            "{h}"
        );
    }

    #[test]
    fn certificate_text_stays_one_safe_header() {
        for (id, issuer) in [
            (
                "alice@example.com\r\nAuthentication-Results: mx; smime=pass",
                "CN=x",
            ),
            ("al\u{e9}@example.com", "CN=a\r\nb"),
            ("\"a b\"@example.com", &"CN=long,".repeat(300)[..]),
            ("a\0b@example.com", "CN=\"q\"\\;"),
        ] {
            let h = header_value("mx", &verdict(Some("r"), Some(id), issuer));
            assert!(crate::mime::header_value_is_safe(&h), "{h:?}");
            assert!(h.is_ascii());
            assert!(!h.contains('\r') && !h.contains('\0'));
            assert!(h.split('\n').all(|l| l.len() <= 998));
        }
        // Non-ASCII or control characters: not shown rather than changed.
        let h = header_value("mx", &verdict(None, Some("al\u{e9}@example.com"), "CN=x"));
        assert!(!h.contains("identifier"), "{h}");
    }

    #[test]
    fn odd_identifiers_are_quoted() {
        assert_eq!(pvalue("alice@example.com").unwrap(), "alice@example.com");
        assert_eq!(
            pvalue("\"a b\"@example.com").unwrap(),
            "\"\\\"a b\\\"@example.com\""
        );
        assert_eq!(pvalue("x;y").unwrap(), "\"x;y\"");
        assert_eq!(pvalue("a\rb"), None);
    }
}
