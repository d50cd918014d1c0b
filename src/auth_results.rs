//! The Authentication-Results header (RFC 8601) with the `smime` method of
//! RFC 7281: building ours, and spotting headers that claim our authserv-id.

use crate::verify::Verdict;

/// The authserv-id of an Authentication-Results value: the first token after
/// any comments and white space (RFC 8601 §2.2), lower case.
pub fn authserv_id(value: &str) -> Option<String> {
    let b = value.as_bytes();
    let mut i = 0;
    // Skip CFWS: white space, folding, and (nested) comments.
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'(' {
            let mut depth = 0usize;
            while i < b.len() {
                match b[i] {
                    b'\\' => i = (i + 1).min(b.len() - 1),
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        break;
    }
    let start = i;
    if i < b.len() && b[i] == b'"' {
        // A quoted-string authserv-id.
        let mut out = String::new();
        i += 1;
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
            }
            out.push(b[i] as char);
            i += 1;
        }
        return (!out.is_empty()).then(|| out.to_ascii_lowercase());
    }
    while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b';' | b'(') {
        i += 1;
    }
    let id = &value[start..i];
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// Whether an Authentication-Results value claims to come from us.
pub fn claims_our_id(value: &str, ours: &str) -> bool {
    authserv_id(value).is_some_and(|id| id.eq_ignore_ascii_case(ours))
}

/// An RFC 8601 pvalue: as is when it is a token or an address of token
/// characters, else a quoted-string.
fn pvalue(s: &str) -> String {
    let tokenish = !s.is_empty()
        && s.bytes().all(|c| {
            c > b' ' && c < 0x7f && !b"()<>,;:\\\"/[]?=".contains(&c) || c == b'@' || c == b'/'
        });
    if tokenish && s.matches('@').count() <= 1 {
        s.to_string()
    } else {
        let mut q = String::with_capacity(s.len() + 2);
        q.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            if !c.is_control() {
                q.push(c);
            }
        }
        q.push('"');
        q
    }
}

/// A comment's text: no parentheses or backslashes to break out of it.
fn comment(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '(' | ')' | '\\') && !c.is_control())
        .collect()
}

/// The header value: `id; smime=result (reason) body.smime-identifier=...`.
pub fn header_value(authserv_id: &str, v: &Verdict) -> String {
    let mut s = format!("{authserv_id}; smime={}", v.result);
    if let Some(r) = &v.reason {
        s.push_str(&format!(" ({})", comment(r)));
    }
    if let Some(id) = &v.identifier {
        s.push_str(&format!(" body.smime-identifier={}", pvalue(id)));
    }
    s.push_str(&format!(" body.smime-part={}", pvalue(&v.part)));
    // RFC 7281: serial and issuer go together.
    if let (Some(serial), Some(issuer)) = (&v.serial, &v.issuer) {
        s.push_str(&format!(
            " body.smime-serial={} body.smime-issuer={}",
            pvalue(serial),
            pvalue(issuer)
        ));
    }
    s
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
        ] {
            assert!(claims_our_id(v, "mx.example.com"), "{v:?}");
        }
        for v in [
            "other.example.com; smime=pass",
            "mx.example.com.evil; smime=pass",
            "; smime=pass",
            "",
            "(\\",
            "(a\\",
        ] {
            assert!(!claims_our_id(v, "mx.example.com"), "{v:?}");
        }
    }

    #[test]
    fn header_with_all_properties() {
        let v = Verdict {
            result: SmimeResult::Pass,
            reason: None,
            identifier: Some("alice@example.com".into()),
            part: "1".into(),
            serial: Some("1E".into()),
            issuer: Some("CN=NSS Test CA (RSA),O=BOGUS NSS".into()),
            signer: None,
        };
        assert_eq!(
            header_value("mx.example.com", &v),
            "mx.example.com; smime=pass body.smime-identifier=alice@example.com body.smime-part=1 \
             body.smime-serial=1E body.smime-issuer=\"CN=NSS Test CA (RSA),O=BOGUS NSS\""
        );
    }

    #[test]
    fn reasons_cannot_break_out_of_the_comment() {
        let v = Verdict {
            result: SmimeResult::Fail,
            reason: Some("bad) smime=pass (x".into()),
            identifier: None,
            part: "1".into(),
            serial: None,
            issuer: Some("only issuer".into()),
            signer: None,
        };
        let h = header_value("mx", &v);
        assert_eq!(h, "mx; smime=fail (bad smime=pass x) body.smime-part=1");
    }

    #[test]
    fn odd_identifiers_are_quoted() {
        assert_eq!(pvalue("alice@example.com"), "alice@example.com");
        assert_eq!(pvalue("\"a b\"@example.com"), "\"\\\"a b\\\"@example.com\"");
        assert_eq!(pvalue("x;y"), "\"x;y\"");
    }
}
