//! Outbound mail: choose the signing key at end of headers, then sign the
//! message at end of body. Pure functions of the configuration and the bytes.

use crate::address;
use crate::config::Config;
use crate::keystore::{self, SigningKey};
use crate::mime::{self, ContentType, Limits};
use crate::outcome::{Changes, HeaderOp, Outcome, Verdict};
use crate::sign;
use std::sync::Arc;

/// What to do once the body has arrived.
#[derive(Debug)]
pub enum Plan {
    Sign(Arc<SigningKey>),
    /// Decided already; the body is not needed.
    Done(Outcome),
}

fn is_content_field(name: &str) -> bool {
    name.len() > 8 && name[..8].eq_ignore_ascii_case("content-")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> impl Iterator<Item = &'a str> + 'a {
    let name = name.to_string();
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
        .map(|(_, v)| v.as_str())
}

/// Whether the message is S/MIME already (signed or encrypted by the client).
fn is_smime(headers: &[(String, String)]) -> bool {
    let Some(ct) = header(headers, "Content-Type")
        .next()
        .and_then(|v| ContentType::parse(&mime::unfold(v)))
    else {
        return false;
    };
    match ct.mime_type.as_str() {
        "multipart/signed" => ct
            .param("protocol")
            .is_some_and(|p| p.to_ascii_lowercase().contains("pkcs7-signature")),
        "application/pkcs7-mime" | "application/x-pkcs7-mime" => true,
        _ => false,
    }
}

/// Decides at end of headers: sign with which key, or an outcome already.
pub fn plan(cfg: &Config, auth_login: Option<&str>, headers: &[(String, String)]) -> Plan {
    if !cfg.signing.enabled {
        return Plan::Done(Outcome::unchanged("signing disabled"));
    }
    let froms: Vec<&str> = header(headers, "From").collect();
    let from = match froms.as_slice() {
        [one] => address::single_address(&mime::unfold(one)),
        _ => None,
    };
    let Some(from) = from else {
        return Plan::Done(Outcome::failure(
            cfg.actions.malformed,
            "no single From address",
        ));
    };
    if is_smime(headers) {
        return Plan::Done(Outcome::unchanged(format!("from=<{from}> already S/MIME")));
    }
    if !crate::policy::may_sign_as(cfg, auth_login, &from) {
        return Plan::Done(Outcome::failure(
            cfg.actions.sender_not_authorized,
            format!(
                "login '{}' may not sign as <{from}>",
                auth_login.unwrap_or_default()
            ),
        ));
    }
    let Some(key) = cfg.keys.find(&from) else {
        return Plan::Done(Outcome::failure(
            cfg.actions.key_not_found,
            format!("no signing key for <{from}>"),
        ));
    };
    if !keystore::valid_now(&key.cert) {
        return Plan::Done(Outcome::failure(
            cfg.actions.key_not_found,
            format!("signing certificate {} is not valid now", key.label()),
        ));
    }
    Plan::Sign(Arc::clone(key))
}

/// The Content-* fields of the message as one header block; a message
/// without a Content-Type is text/plain (RFC 2045 §5.2).
fn content_header_block(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    let mut has_ct = false;
    for (name, value) in headers.iter().filter(|(n, _)| is_content_field(n)) {
        has_ct |= name.eq_ignore_ascii_case("Content-Type");
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.trim_start().as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    if !has_ct {
        let charset = if body.is_ascii() {
            "us-ascii"
        } else if std::str::from_utf8(body).is_ok() {
            "utf-8"
        } else {
            "unknown-8bit"
        };
        block.extend_from_slice(
            format!("Content-Type: text/plain; charset={charset}\r\n").as_bytes(),
        );
    }
    block
}

/// The header changes that move the Content-* fields into the signed entity
/// and put the new ones on the message.
fn header_ops(headers: &[(String, String)], signed: &sign::Signed) -> Vec<HeaderOp> {
    let mut ops = Vec::new();
    let mut names: Vec<(String, usize)> = Vec::new(); // lower-case name, count
    for (name, _) in headers.iter().filter(|(n, _)| is_content_field(n)) {
        let lower = name.to_ascii_lowercase();
        match names.iter_mut().find(|(n, _)| *n == lower) {
            Some((_, c)) => *c += 1,
            None => names.push((lower, 1)),
        }
    }
    let mut ct_count = 0;
    for (name, count) in &names {
        let first = if name == "content-type" {
            ct_count = *count;
            2
        } else {
            1
        };
        for index in (first..=*count).rev() {
            ops.push(HeaderOp::Change {
                name: canonical_name(name),
                index,
                value: None,
            });
        }
    }
    if ct_count > 0 {
        ops.push(HeaderOp::Change {
            name: "Content-Type".into(),
            index: 1,
            value: Some(signed.content_type.clone()),
        });
    } else {
        ops.push(HeaderOp::Add {
            name: "Content-Type".into(),
            value: signed.content_type.clone(),
        });
    }
    if let Some(cte) = signed.transfer_encoding {
        ops.push(HeaderOp::Add {
            name: "Content-Transfer-Encoding".into(),
            value: cte.into(),
        });
    }
    for (name, value) in &signed.extra_fields {
        ops.push(HeaderOp::Add {
            name: (*name).into(),
            value: value.clone(),
        });
    }
    if header(headers, "MIME-Version").next().is_none() {
        ops.push(HeaderOp::Add {
            name: "MIME-Version".into(),
            value: "1.0".into(),
        });
    }
    ops
}

fn canonical_name(lower: &str) -> String {
    lower
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Signs the message: builds the canonical entity from the Content-* fields
/// and the body, signs it, and returns the changes for the MTA.
pub fn sign_message(
    cfg: &Config,
    key: &SigningKey,
    headers: &[(String, String)],
    body: &[u8],
) -> Outcome {
    let block = content_header_block(headers, body);
    let mut entity = Vec::with_capacity(block.len() + body.len() + body.len() / 16 + 2);
    let limits = Limits {
        max_depth: cfg.max_mime_depth,
        max_parts: cfg.max_mime_parts,
    };
    if let Err(e) = mime::write_7bit(&block, body, 0, limits, &mut entity) {
        return Outcome::failure(cfg.actions.malformed, format!("cannot sign safely: {e}"));
    }
    let signed = match sign::sign_entity(
        key,
        &entity,
        cfg.signing.format,
        cfg.signing.digest,
        cfg.signing.include_chain,
    ) {
        Ok(s) => s,
        Err(e) => return Outcome::failure(cfg.actions.internal_error, e.to_string()),
    };
    let ops = header_ops(headers, &signed);
    Outcome {
        verdict: Verdict::Accept,
        changes: Changes {
            headers: ops,
            body: Some(signed.body),
        },
        action: "signed",
        reason: None,
        detail: Some(format!("key={}", key.label())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn content_fields_move_into_the_entity() {
        let headers = h(&[
            ("From", "a@example.com"),
            ("Content-Type", "text/plain;\n\tcharset=utf-8"),
            ("Content-Transfer-Encoding", "8bit"),
            ("Subject", "hi"),
            ("Content-Disposition", "inline"),
        ]);
        let block = content_header_block(&headers, b"x");
        assert_eq!(
            block,
            b"Content-Type: text/plain;\n\tcharset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nContent-Disposition: inline\r\n"
        );
        let signed = sign::Signed {
            content_type: "multipart/signed; x".into(),
            transfer_encoding: None,
            extra_fields: vec![],
            body: vec![],
        };
        let ops = header_ops(&headers, &signed);
        assert_eq!(
            ops,
            vec![
                HeaderOp::Change {
                    name: "Content-Transfer-Encoding".into(),
                    index: 1,
                    value: None
                },
                HeaderOp::Change {
                    name: "Content-Disposition".into(),
                    index: 1,
                    value: None
                },
                HeaderOp::Change {
                    name: "Content-Type".into(),
                    index: 1,
                    value: Some("multipart/signed; x".into())
                },
                HeaderOp::Add {
                    name: "MIME-Version".into(),
                    value: "1.0".into()
                },
            ]
        );
    }

    #[test]
    fn message_without_mime_headers_is_text_plain() {
        assert_eq!(
            content_header_block(&h(&[("From", "a@x")]), b"hi"),
            b"Content-Type: text/plain; charset=us-ascii\r\n"
        );
        assert_eq!(
            content_header_block(&h(&[]), "grüß".as_bytes()),
            b"Content-Type: text/plain; charset=utf-8\r\n"
        );
        assert_eq!(
            content_header_block(&h(&[]), b"\xe4"),
            b"Content-Type: text/plain; charset=unknown-8bit\r\n"
        );
    }

    #[test]
    fn smime_messages_are_recognised() {
        assert!(is_smime(&h(&[("Content-Type", "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=x")])));
        assert!(is_smime(&h(&[(
            "content-type",
            "application/x-pkcs7-mime; smime-type=enveloped-data"
        )])));
        assert!(!is_smime(&h(&[(
            "Content-Type",
            "multipart/signed; protocol=\"application/pgp-signature\""
        )])));
        assert!(!is_smime(&h(&[("Content-Type", "text/plain")])));
    }

    #[test]
    fn duplicate_content_types_are_all_replaced() {
        let headers = h(&[
            ("Content-Type", "text/plain"),
            ("Content-Type", "text/html"),
            ("MIME-Version", "1.0"),
        ]);
        let signed = sign::Signed {
            content_type: "new".into(),
            transfer_encoding: Some("base64"),
            extra_fields: vec![],
            body: vec![],
        };
        let ops = header_ops(&headers, &signed);
        assert_eq!(
            ops,
            vec![
                HeaderOp::Change {
                    name: "Content-Type".into(),
                    index: 2,
                    value: None
                },
                HeaderOp::Change {
                    name: "Content-Type".into(),
                    index: 1,
                    value: Some("new".into())
                },
                HeaderOp::Add {
                    name: "Content-Transfer-Encoding".into(),
                    value: "base64".into()
                },
            ]
        );
    }
}
