//! S/MIME signature verification (RFC 8551 §3.5, RFC 8550): walks the
//! signed layers of an entity and returns one RFC 7281 result. The rules,
//! and the attacks each one stops, are in doc/inbound-verdicts.md.
//!
//! - `form`: which entities are signed, and the bytes a signature covers;
//! - `cms`: the SignedData itself and OpenSSL's check of the signature;
//! - `certpolicy`: the signer certificate, weak crypto, the From match;
//! - `date`: RFC 5322 dates;
//! - `verdict`: what they share: the verdict, the settings and context.

mod certpolicy;
mod cms;
mod form;
mod verdict;

pub use crate::mail::date::parse_date;
use crate::pki::cert_addresses;
pub use form::{
    decode_body, header_problem, outside_text, signed_content, signed_form, SignedForm,
};
pub use verdict::{Context, FromView, Settings, SmimeResult, Verdict};

use crate::address::{self, FromIdentity};
use crate::mime::{self, ContentType, SmimeKind};

/// Verifies the entity with this Content-Type and transfer encoding, and every
/// signed layer inside it. `None` when it is not signed.
pub fn verify_entity(
    ctx: &Context<'_>,
    ct: &ContentType,
    cte: Option<&str>,
    body: &[u8],
    part: &str,
    depth: usize,
) -> Option<Verdict> {
    let form = signed_form(ct)?;
    // A limit must never turn a failing signature into a milder result.
    if depth > ctx.settings.max_depth {
        return Some(Verdict::error(
            SmimeResult::Permerror,
            part,
            format!("signatures nested deeper than {}", ctx.settings.max_depth),
        ));
    }
    let (mut verdict, content) = match form {
        SignedForm::Clear => verify_clear(ctx, ct, body, part),
        SignedForm::Opaque => verify_opaque(ctx, ct, cte, body, part)?,
    };
    // A signed layer inside: each must hold (RFC 8551 §3.7 nesting).
    let Some(content) = content else {
        return Some(verdict);
    };
    let (h, b) = mime::entity_parts(mime::skip_mbox_from(&content));
    let fields = mime::parse_fields(h);
    // Content without MIME headers is text/plain (RFC 2045 §5.2): signed
    // like any other, nothing more inside.
    let Some(inner_ct) =
        mime::field_value(&fields, "Content-Type").and_then(|v| ContentType::parse(&v))
    else {
        return Some(verdict);
    };
    let inner_cte = mime::field_value(&fields, "Content-Transfer-Encoding");
    verdict.protected = crate::protected::read(&inner_ct, &fields);
    if verdict.result == SmimeResult::Pass {
        if let Some(why) = inner_from_problem(&inner_ct, inner_cte.as_deref(), &fields, b, &verdict)
        {
            verdict.result = SmimeResult::Policy;
            verdict.reason = Some(why.into());
            verdict.signer = None;
        }
    }
    let inner_part = if part == "1" {
        "1.1".to_string()
    } else {
        format!("{part}.1")
    };
    // An opaque layer inside an opaque one is shown by readers as an
    // attachment, not as signed content (Thunderbird does the same).
    if form == SignedForm::Opaque && signed_form(&inner_ct) == Some(SignedForm::Opaque) {
        return Some(verdict);
    }
    match verify_entity(
        ctx,
        &inner_ct,
        inner_cte.as_deref(),
        b,
        &inner_part,
        depth + 1,
    ) {
        Some(inner) if inner.result > verdict.result => {
            let reason = inner
                .reason
                .as_deref()
                .map(|r| format!("inner signature: {r}"));
            let protected = inner.protected.clone().or(verdict.protected);
            Some(Verdict {
                reason,
                protected,
                ..inner
            })
        }
        // The innermost payload is the one whose header section counts.
        Some(inner) if inner.protected.is_some() => Some(Verdict {
            protected: inner.protected,
            ..verdict
        }),
        _ => Some(verdict),
    }
}

/// Header protection: a signed `message/rfc822` (RFC 8551 §3.1) or a
/// protected header section (RFC 9788 `hp=`, also as an RFC 2231 form, or
/// the older `protected-headers=`) carries the From that readers with header
/// protection show; it must be the signer's. Read as a lax reader reads it:
/// after an mbox `From ` line, and with fields hidden behind a bare CR.
fn inner_from_problem(
    ct: &ContentType,
    cte: Option<&str>,
    fields: &[mime::Field<'_>],
    body: &[u8],
    verdict: &Verdict,
) -> Option<&'static str> {
    let inner_msg;
    let inner_fields = if ct.is_message() {
        // RFC 2046 §5.2.1: no encoding but 7bit, 8bit, binary; an encoded
        // message is one whose From some readers decode and we cannot check.
        if !matches!(
            cte.map(|c| c.trim().to_ascii_lowercase()).as_deref(),
            None | Some("7bit" | "8bit" | "binary")
        ) {
            return Some("encoded message/rfc822 not checkable");
        }
        inner_msg = mime::parse_fields(mime::entity_parts(mime::skip_mbox_from(body)).0);
        &inner_msg[..]
    } else if ct
        .params
        .iter()
        .any(|(n, _)| n == "hp" || n.starts_with("hp*") || n.starts_with("protected-headers"))
    {
        fields
    } else {
        return None;
    };
    let pairs: Vec<(String, String)> = inner_fields
        .iter()
        .map(|f| {
            (
                f.name.to_string(),
                String::from_utf8_lossy(f.value).into_owned(),
            )
        })
        .collect();
    if mime::hidden_fields(&pairs)
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("From"))
    {
        return Some("inner From hidden in another field");
    }
    let froms: Vec<String> = inner_fields
        .iter()
        .filter(|f| f.name.trim_end().eq_ignore_ascii_case("From"))
        .map(|f| f.unfolded())
        .collect();
    let signer = verdict.signer.as_ref()?;
    let ok = match froms.as_slice() {
        // No inner From: readers show the outer one, checked already.
        [] => return None,
        [one] => match address::from_identity(one) {
            FromIdentity::One(a) => cert_addresses(&signer.cert)
                .iter()
                .any(|c| address::same_address(c, &a)),
            _ => false,
        },
        _ => false,
    };
    (!ok).then_some("inner From not signer")
}

fn verify_clear(
    ctx: &Context<'_>,
    ct: &ContentType,
    body: &[u8],
    part: &str,
) -> (Verdict, Option<Vec<u8>>) {
    let perm = |r: &str| (Verdict::error(SmimeResult::Permerror, part, r), None);
    let Some(boundary) = ct.param("boundary").filter(|b| !b.is_empty()) else {
        return perm("multipart/signed without boundary");
    };
    if !form::valid_boundary(boundary) {
        return perm("boundary not allowed by RFC 2046");
    }
    let mp = match mime::split_multipart(body, boundary) {
        Ok(m) => m,
        Err(_) => return perm("boundary not found"),
    };
    // Exactly two parts, whatever the part limit: a limit must not make a
    // broken signature milder.
    if mp.parts.len() != 2 {
        return perm(&format!("multipart/signed with {} parts", mp.parts.len()));
    }
    let outside = match form::outside_text(mp.preamble, mp.epilogue) {
        Ok(o) => o,
        Err(why) => return perm(why),
    };
    let (sig_head, sig_body) = mime::split_entity(mp.parts[1]);
    if let Some(why) = form::strict_header_block(mp.parts[1], sig_head) {
        return perm(why);
    }
    let sig_fields = mime::parse_fields(sig_head);
    if let Some(why) = form::unsigned_header_problem(&sig_fields) {
        return perm(why);
    }
    let sig_ct =
        mime::field_value(&sig_fields, "Content-Type").and_then(|v| ContentType::parse(&v));
    if !sig_ct.is_some_and(|c| {
        matches!(
            c.mime_type.as_str(),
            "application/pkcs7-signature" | "application/x-pkcs7-signature"
        )
    }) {
        return perm("second part is not a signature");
    }
    let der = match decode_body(
        mime::field_value(&sig_fields, "Content-Transfer-Encoding").as_deref(),
        sig_body,
    ) {
        Ok(d) => d,
        Err(e) => return perm(e),
    };
    let mut parsed = match crate::signed_data::parse(&der) {
        Ok(p) => p,
        Err(e) => return perm(e),
    };
    // The signed bytes are the first part exactly as sent, in CRLF form.
    let content = form::canonical(mp.parts[0]);
    let mut verdict = cms::check_signed(ctx, &mut parsed, Some(&content), None, part);
    if outside && verdict.result == SmimeResult::Pass && verdict.reason.is_none() {
        verdict.reason = Some("unsigned preamble or epilogue ignored".into());
    }
    (verdict, Some(content.into_owned()))
}

fn verify_opaque(
    ctx: &Context<'_>,
    ct: &ContentType,
    cte: Option<&str>,
    body: &[u8],
    part: &str,
) -> Option<(Verdict, Option<Vec<u8>>)> {
    let perm = |r: &str| Some((Verdict::error(SmimeResult::Permerror, part, r), None));
    let der = match decode_body(cte, body) {
        Ok(d) => d,
        Err(e) => return perm(e),
    };
    let mut parsed = match crate::signed_data::parse(&der) {
        Ok(p) => p,
        Err(e) => return perm(e),
    };
    if !cms::is_signed_data(&parsed.cms) {
        // A `.p7m` without smime-type may be enveloped: not a signature.
        // One that says signed-data and is something else says two things.
        let says_signed = ct.smime_kind() == SmimeKind::OpaqueSigned;
        return says_signed.then(|| {
            (
                Verdict::error(
                    SmimeResult::Permerror,
                    part,
                    "signed-data that is not a SignedData",
                ),
                None,
            )
        });
    }
    let mut content = Vec::new();
    let verdict = cms::check_signed(ctx, &mut parsed, None, Some(&mut content), part);
    let content =
        (verdict.result != SmimeResult::Permerror).then(|| form::canonical(&content).into_owned());
    Some((verdict, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_order() {
        assert!(SmimeResult::Pass < SmimeResult::Policy);
        assert!(SmimeResult::Policy < SmimeResult::Fail);
        assert!(SmimeResult::Fail < SmimeResult::Permerror);
    }
}
