//! Finding the signed form of an entity and the bytes a signature covers,
//! and refusing the unsigned parts of a signed message that can be read
//! more than one way (doc/inbound-verdicts.md §3).

use crate::mime::{self, ContentType, SmimeKind};
use openssl::cms::{CMSOptions, CmsContentInfo};
use std::borrow::Cow;

/// How an entity is signed, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedForm {
    Clear,
    Opaque,
}

/// multipart/signed with an S/MIME protocol, or pkcs7-mime that is (or may
/// be, for a `.p7m` without smime-type) signed-data.
pub fn signed_form(ct: &ContentType) -> Option<SignedForm> {
    match ct.smime_kind() {
        SmimeKind::ClearSigned => Some(SignedForm::Clear),
        SmimeKind::OpaqueSigned | SmimeKind::UntypedP7m => Some(SignedForm::Opaque),
        _ => None,
    }
}

/// The content a signed entity carries, without judging the signature (to
/// see what it wraps): the first part of a multipart/signed, the eContent of
/// an opaque signature.
pub fn signed_content<'a>(
    ct: &ContentType,
    cte: Option<&str>,
    body: &'a [u8],
) -> Option<Cow<'a, [u8]>> {
    match signed_form(ct)? {
        SignedForm::Clear => {
            let mp = mime::split_multipart(body, ct.param("boundary")?).ok()?;
            mp.parts.first().map(|p| canonical(p))
        }
        SignedForm::Opaque => {
            let mut cms = CmsContentInfo::from_der(&decode_body(cte, body).ok()?).ok()?;
            let mut out = Vec::new();
            let flags = CMSOptions::NOSIGS
                | CMSOptions::NO_SIGNER_CERT_VERIFY
                | CMSOptions::NO_CONTENT_VERIFY
                | CMSOptions::BINARY;
            cms.verify(None, None, None, Some(&mut out), flags).ok()?;
            Some(Cow::Owned(out))
        }
    }
}

/// Decodes a body: base64 in any line length, or raw.
pub fn decode_body(cte: Option<&str>, body: &[u8]) -> Result<Vec<u8>, &'static str> {
    let is_b64 = cte.is_some_and(|c| c.trim().eq_ignore_ascii_case("base64"));
    if !is_b64 {
        return Ok(body.to_vec());
    }
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let text = std::str::from_utf8(&clean).map_err(|_| "signature not base64")?;
    if text.is_empty() {
        return Err("empty signature");
    }
    openssl::base64::decode_block(text).map_err(|_| "signature not base64")
}

/// The signed bytes in CRLF form.
pub(super) fn canonical(bytes: &[u8]) -> Cow<'_, [u8]> {
    let bare_lf = memchr::memchr_iter(b'\n', bytes).any(|i| i == 0 || bytes[i - 1] != b'\r');
    if bare_lf {
        let mut v = Vec::with_capacity(bytes.len() + bytes.len() / 16);
        mime::push_crlf(&mut v, bytes);
        Cow::Owned(v)
    } else {
        Cow::Borrowed(bytes)
    }
}

/// Notices clients put in the preamble of a multipart/signed; nothing a
/// reader needs to be told about.
const NOTICES: [&str; 5] = [
    "this is an s/mime signed message",
    "this is a cryptographically signed message in mime format",
    "this is a multipart message in mime format",
    "this is a multi-part message in mime format",
    "this is a signed message",
];

/// The preamble and epilogue of a multipart/signed: no signature covers
/// them. `Err` when a line there could be taken for structure by a lax
/// parser (a delimiter or a header field); `Ok(true)` when they hold text
/// other than white space and the usual notices.
pub fn outside_text(preamble: &[u8], epilogue: &[u8]) -> Result<bool, &'static str> {
    let mut text = false;
    for block in [preamble, epilogue] {
        for line in block.split(|&b| b == b'\n' || b == b'\r') {
            let t = String::from_utf8_lossy(line);
            let t = t.trim();
            if t.is_empty() {
                continue;
            }
            if t.starts_with("--") {
                return Err("MIME delimiter outside the signed parts");
            }
            if looks_like_field(t) {
                return Err("header field outside the signed parts");
            }
            let lower = t.to_ascii_lowercase();
            if !NOTICES.contains(&lower.trim_end_matches('.')) {
                text = true;
            }
        }
    }
    Ok(text)
}

/// RFC 2046 §5.1.1: 1 to 70 of `bchars`, not ending in a space. Readers
/// trim or split anything else differently.
pub(super) fn valid_boundary(b: &str) -> bool {
    (1..=70).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
}

/// The signature part is not signed: every line of its header must be a
/// field or a continuation, and no bare CR may stand anywhere in it, or a
/// reader may find a part there that we do not.
pub(super) fn strict_header_block(part: &[u8], head: &[u8]) -> Option<&'static str> {
    let bare_cr = memchr::memchr_iter(b'\r', part).any(|i| part.get(i + 1) != Some(&b'\n'));
    if bare_cr {
        return Some("bare CR in the signature part");
    }
    let all_fields = head
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .all(|l| {
            matches!(l[0], b' ' | b'\t')
                || memchr::memchr(b':', l)
                    .is_some_and(|c| c > 0 && l[..c].iter().all(|b| b.is_ascii_graphic()))
        });
    (!all_fields).then_some("signature part header line that is not a field")
}

/// `Name:` or `Name :` at the start of a line, as a header field starts.
fn looks_like_field(line: &str) -> bool {
    match line.split_once(':') {
        Some((name, _)) => {
            let name = name.trim_end();
            !name.is_empty()
                && name.len() < 80
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        }
        None => false,
    }
}

/// The header of an unsigned layer (the message, the signature part): a
/// Content-Type or Content-Transfer-Encoding given twice, a Content-Type
/// that reads two ways, or a transfer encoding on a multipart.
pub fn unsigned_header_problem(fields: &[mime::Field<'_>]) -> Option<&'static str> {
    let values = |name: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|f| mime::is_named(f.name, name))
            .map(|f| f.unfolded())
            .collect()
    };
    let cts = values("Content-Type");
    let ctes = values("Content-Transfer-Encoding");
    header_problem(&cts, &ctes)
}

/// `unsigned_header_problem` over the values of the message's fields.
pub fn header_problem(cts: &[String], ctes: &[String]) -> Option<&'static str> {
    if cts.len() > 1 {
        return Some("duplicate Content-Type");
    }
    if ctes.len() > 1 {
        return Some("duplicate Content-Transfer-Encoding");
    }
    let ct = cts.first()?;
    if let Some(why) = mime::content_type_ambiguity(ct) {
        return Some(why);
    }
    let is_multipart = ContentType::parse(ct).is_some_and(|c| c.is_multipart());
    let cte = ctes.first().map(|c| c.trim().to_ascii_lowercase());
    if is_multipart && !matches!(cte.as_deref(), None | Some("7bit" | "8bit" | "binary")) {
        return Some("transfer encoding on a multipart");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_forms() {
        let p = |s: &str| signed_form(&ContentType::parse(s).unwrap());
        assert_eq!(p("multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=x"), Some(SignedForm::Clear));
        assert_eq!(
            p("multipart/signed; protocol=application/x-pkcs7-signature; boundary=x"),
            Some(SignedForm::Clear)
        );
        assert_eq!(
            p("multipart/signed; protocol=\"application/pgp-signature\"; boundary=x"),
            None
        );
        assert_eq!(
            p("application/pkcs7-mime; smime-type=signed-data; name=smime.p7m"),
            Some(SignedForm::Opaque)
        );
        assert_eq!(
            p("application/x-pkcs7-mime; name=\"smime.p7m\""),
            Some(SignedForm::Opaque)
        );
        assert_eq!(
            p("application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"),
            None
        );
        assert_eq!(p("text/plain"), None);
    }

    #[test]
    fn preamble_and_epilogue() {
        assert_eq!(outside_text(b"", b""), Ok(false));
        assert_eq!(
            outside_text(b"This is an S/MIME signed message\r\n\r\n", b"\r\n"),
            Ok(false)
        );
        assert_eq!(outside_text(b"Pay the invoice today.\r\n", b""), Ok(true));
        assert!(outside_text(b"", b"--other\r\nContent-Type: text/html\r\n").is_err());
        assert!(outside_text(b"Content-Type: text/html\r\n", b"").is_err());
    }

    #[test]
    fn ambiguous_unsigned_headers() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ok = "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"b\"";
        assert_eq!(header_problem(&s(&[ok]), &[]), None);
        assert_eq!(header_problem(&s(&[ok]), &s(&["7bit"])), None);
        for (cts, ctes) in [
            (vec![ok, ok], vec![]),
            (vec![ok], vec!["base64"]),
            (vec![ok], vec!["7bit", "7bit"]),
            (
                vec!["multipart/signed; boundary=a; boundary=b; protocol=x"],
                vec![],
            ),
            (
                vec!["multipart/signed; boundary*0=a; boundary*1=b; protocol=x"],
                vec![],
            ),
            (
                vec!["multipart/signed; boundary*=utf-8''a; protocol=x"],
                vec![],
            ),
            (
                vec!["multipart/signed; (boundary=\"x\") boundary=y; protocol=x"],
                vec![],
            ),
            (
                vec!["multipart/signed; boundary=y junk; protocol=x"],
                vec![],
            ),
            (vec!["multipart/signed; boundary=y\rx; protocol=x"], vec![]),
        ] {
            assert!(
                header_problem(&s(&cts), &s(&ctes)).is_some(),
                "{cts:?} {ctes:?}"
            );
        }
    }
}
