//! Outbound mail: choose the signing key and the recipients' certificates at
//! end of headers, then sign and/or encrypt the message at end of body. Pure
//! functions of the configuration and the bytes.

use crate::address;
use crate::certstore::{Lookup, RecipientCert};
use crate::config::{EncryptMode, FailAction};
use crate::encrypt;
use crate::keystore::SigningKey;
use crate::metrics::Operation;
use crate::mime::{self, values_named, ContentType, Limits, SmimeKind};
use crate::outcome::{Changes, HeaderOp, Outcome, Verdict};
use crate::policy;
use crate::protected::{self, Hp};
use crate::runtime::Runtime;
use crate::sign;
use std::sync::Arc;
use std::time::Instant;

/// What to do once the body has arrived.
#[derive(Debug)]
pub enum Plan {
    /// Sign and/or encrypt (at least one of them).
    Process(Work),
    /// Decided already; the body is not needed.
    Done(Outcome),
}

/// The work for end of message.
#[derive(Debug, Default)]
pub struct Work {
    pub sign: Option<Arc<SigningKey>>,
    /// One certificate per recipient.
    pub encrypt: Option<Vec<Arc<RecipientCert>>>,
    /// Why a step is skipped (for the summary line).
    pub notes: Vec<String>,
    /// Encryption is required for some recipient: no failure may let the
    /// message through in plaintext.
    pub required: bool,
    /// Header values that were not UTF-8, by header index, as they came:
    /// what we sign carries them byte for byte.
    pub raw_values: Vec<(usize, Vec<u8>)>,
}

/// What the client did already: (signed, encrypted).
fn smime_state(headers: &[(String, String)]) -> (bool, bool) {
    let Some(ct) = values_named(headers, "Content-Type")
        .next()
        .and_then(|v| ContentType::parse(&mime::unfold(v)))
    else {
        return (false, false);
    };
    match ct.smime_kind() {
        SmimeKind::ClearSigned => (true, false),
        SmimeKind::Enveloped => (false, true),
        // Without smime-type it may be either: counted as signed, so it
        // is still encrypted when policy says so.
        k if k.is_pkcs7_mime() => (true, false),
        _ => (false, false),
    }
}

/// Decides at end of headers: which key signs, which certificates encrypt,
/// or the outcome already.
pub fn plan(
    rt: &Runtime,
    auth_login: Option<&str>,
    sender: &str,
    rcpts: &[String],
    headers: &[(String, String)],
    deadline: Instant,
) -> Plan {
    let (signed, encrypted) = smime_state(headers);
    if encrypted {
        return Plan::Done(Outcome::unchanged("already S/MIME encrypted"));
    }
    let mut work = Work {
        required: encryption_required(rt, sender, rcpts),
        ..Work::default()
    };
    match encryption(rt, sender, rcpts, deadline) {
        Ok((certs, note)) => {
            work.encrypt = certs;
            work.notes.extend(note);
        }
        Err(o) => return Plan::Done(o),
    }
    if signed {
        work.notes.push("already S/MIME signed".into());
    } else {
        match signing_key(rt, auth_login, headers) {
            Ok(k) => work.sign = Some(k),
            // Without encryption, the signing failure decides; with it, only
            // a refusal does (an unsigned encrypted message is still wanted).
            Err(mut o) if work.encrypt.is_none() || o.verdict != Verdict::Accept => {
                o.reason = Some(
                    o.reason
                        .into_iter()
                        .chain(work.notes)
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                return Plan::Done(o);
            }
            Err(o) => work.notes.extend(o.reason),
        }
    }
    if work.sign.is_none() && work.encrypt.is_none() {
        return Plan::Done(Outcome::unchanged(work.notes.join(", ")));
    }
    Plan::Process(work)
}

/// The signing key for the From address, or the outcome without one.
fn signing_key(
    rt: &Runtime,
    auth_login: Option<&str>,
    headers: &[(String, String)],
) -> Result<Arc<SigningKey>, Outcome> {
    if !rt.config.signing.enabled {
        return Err(Outcome::unchanged("signing disabled"));
    }
    let from = mime::only_value(headers, "From").and_then(|v| address::single_address(&v));
    let Some(from) = from else {
        return Err(Outcome::failure(
            rt.config.actions.malformed,
            "no single From address",
        ));
    };
    if !crate::policy::may_sign_as(&rt.config, auth_login, &from) {
        return Err(Outcome::failure(
            rt.config.actions.sender_not_authorized,
            format!(
                "login '{}' may not sign as <{from}>",
                auth_login.unwrap_or_default()
            ),
        ));
    }
    let Some(key) = rt.keys.find(&from) else {
        return Err(Outcome::failure(
            rt.config.actions.key_not_found,
            format!("no signing key for <{from}>"),
        ));
    };
    if !crate::pki::valid_now(&key.cert) {
        return Err(Outcome::failure(
            rt.config.actions.key_not_found,
            format!("signing certificate {} is not valid now", key.label()),
        ));
    }
    Ok(Arc::clone(key))
}

/// Whether policy requires encryption for any of the recipients.
pub fn encryption_required(rt: &Runtime, sender: &str, rcpts: &[String]) -> bool {
    rt.config.encrypt.as_ref().is_some_and(|enc| {
        rcpts
            .iter()
            .any(|r| policy::encrypt_mode(enc, sender, r) == EncryptMode::Required)
    })
}

/// The encryption decision: certificates to encrypt to, or why not.
type Encryption = (Option<Vec<Arc<RecipientCert>>>, Option<String>);

/// Whether to encrypt, and to which certificates (RFC 8551 §3.3): required
/// for any recipient means every recipient must have a certificate;
/// opportunistic for all means encrypt when all have one.
fn encryption(
    rt: &Runtime,
    sender: &str,
    rcpts: &[String],
    deadline: Instant,
) -> Result<Encryption, Outcome> {
    let Some(enc) = &rt.config.encrypt else {
        return Ok((None, None));
    };
    if rcpts.is_empty() {
        return Ok((None, None));
    }
    let required = encryption_required(rt, sender, rcpts);
    if !required
        && rcpts
            .iter()
            .any(|r| policy::encrypt_mode(enc, sender, r) == EncryptMode::Never)
    {
        return Ok((None, None));
    }
    let Some(store) = &rt.certs else {
        // Runtime::new builds one whenever [encrypt] is set: never plaintext.
        return Err(Outcome::failure(
            FailAction::Tempfail,
            "no recipient certificate store",
        ));
    };
    let trust = rt.recipient_trust();
    let (mut certs, mut missing, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    // A recipient not looked up (None) waits on one that decided already.
    for (r, found) in rcpts.iter().zip(store.find_all(rcpts, trust, deadline)) {
        match found {
            Some(Lookup::Found(c)) => certs.push(c),
            Some(Lookup::NotFound) => missing.push(format!("<{r}>")),
            Some(Lookup::Error(e)) => errors.push(format!("<{r}>: {e}")),
            None => {}
        }
    }
    if errors.is_empty() && missing.is_empty() && certs.len() < rcpts.len() {
        // Not looked up, and nothing else decided: unknown, never plaintext.
        errors.push("recipients not looked up".into());
    }
    if !errors.is_empty() {
        let reason = format!("certificate lookup failed for {}", errors.join(", "));
        // Never plaintext where encryption is required.
        let action = if required {
            FailAction::Tempfail.stricter(rt.config.actions.lookup_error)
        } else {
            rt.config.actions.lookup_error
        };
        return match action {
            FailAction::Accept => Ok((None, Some(reason))),
            a => Err(Outcome::failure(a, reason)),
        };
    }
    if !missing.is_empty() {
        let reason = format!("no usable certificate for {}", missing.join(", "));
        if required {
            return Err(Outcome::failure(
                enc.missing_cert,
                format!("{reason} (encryption required)"),
            ));
        }
        return Ok((None, Some(format!("not encrypted: {reason}"))));
    }
    add_escrow(rt, enc, store, &mut certs, deadline)?;
    Ok((Some(certs), None))
}

/// Adds the `additional_recipients` to a message we encrypt. Any of them
/// missing, unusable or not looked up defers the message: an archive that
/// silently lacks mail is worse than a delay.
fn add_escrow(
    rt: &Runtime,
    enc: &crate::config::Encryption,
    store: &crate::certstore::CertStore,
    certs: &mut Vec<Arc<RecipientCert>>,
    deadline: Instant,
) -> Result<(), Outcome> {
    use crate::config::AdditionalRecipient;
    let escrow_failure =
        |why: String| Outcome::failure(FailAction::Tempfail, format!("additional recipient {why}"));
    let addresses: Vec<String> = enc
        .additional_recipients
        .iter()
        .filter_map(|a| match &a.value {
            AdditionalRecipient::Address(addr) => Some(addr.clone()),
            AdditionalRecipient::File(_) => None,
        })
        .collect();
    let mut extra: Vec<Arc<RecipientCert>> = Vec::new();
    for c in &rt.escrow {
        // Checked at start; it may have expired since.
        if let Some(why) = crate::certstore::unusable_key(&c.cert) {
            return Err(escrow_failure(format!(
                "certificate {}: {why}",
                crate::pki::serial_hex(&c.cert).unwrap_or_default()
            )));
        }
        extra.push(Arc::clone(c));
    }
    if !addresses.is_empty() {
        let found = store.find_all(&addresses, rt.recipient_trust(), deadline);
        for (a, f) in addresses.iter().zip(found) {
            match f {
                Some(Lookup::Found(c)) => extra.push(c),
                Some(Lookup::NotFound) => {
                    return Err(escrow_failure(format!("<{a}>: no usable certificate")))
                }
                Some(Lookup::Error(e)) => return Err(escrow_failure(format!("<{a}>: {e}"))),
                None => return Err(escrow_failure(format!("<{a}>: not looked up"))),
            }
        }
    }
    for c in extra {
        // A recipient who is also an escrow recipient is encrypted to once.
        if !certs.iter().any(|k| k.cert == c.cert) {
            certs.push(c);
        }
    }
    Ok(())
}

/// The Content-* fields of the message as one header block; a message
/// without a Content-Type is text/plain (RFC 2045 §5.2).
fn content_header_block(
    headers: &[(String, String)],
    raw_values: &[(usize, Vec<u8>)],
    body: &[u8],
) -> Vec<u8> {
    let mut block = Vec::new();
    let mut has_ct = false;
    for (i, (name, value)) in headers.iter().enumerate() {
        if !mime::is_content_field(name) {
            continue;
        }
        has_ct |= mime::is_named(name, "Content-Type");
        let value = match raw_values.iter().find(|(at, _)| *at == i) {
            Some((_, raw)) => raw.trim_ascii_start(),
            None => value.trim_start().as_bytes(),
        };
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value);
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

/// RFC 9788 header protection for one message.
struct Protection {
    hp: Hp,
    /// The fields copied into the payload.
    fields: Vec<(String, String)>,
    /// What stays outside (encrypted: after the confidentiality policy).
    outer: Vec<(String, String)>,
    /// The changes the policy makes to the outer header.
    outer_ops: Vec<HeaderOp>,
}

fn header_protection(
    rt: &Runtime,
    work: &Work,
    headers: &[(String, String)],
) -> Option<Protection> {
    let cfg = &rt.config.header_protection;
    if !cfg.enabled || (work.sign.is_none() && work.encrypt.is_none()) {
        return None;
    }
    // Signed by its sender already (we only encrypt it): the payload is the
    // signed content, whose header we cannot add to; a policy hiding the
    // Subject would hide it from every reader for good.
    let signed_already = values_named(headers, "Content-Type")
        .filter_map(|v| ContentType::parse(&mime::unfold(v)))
        .any(|ct| ct.mime_type == "multipart/signed" || ct.smime_kind() != SmimeKind::NotSmime);
    if signed_already {
        return None;
    }
    // Each field with its index among the fields of its name (what a
    // header change names), counted over all of them.
    let indices = crate::outcome::field_indices(headers);
    let indexed: Vec<(usize, &str, &str)> = headers
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| protected::is_protected(n))
        // Bytes that are not UTF-8 are not copied as lossy text, and an
        // address that is not ASCII cannot be encoded (RFC 2047 §5): such
        // fields stay outside only, unprotected, as before.
        .filter(|(i, (n, v))| {
            !work.raw_values.iter().any(|(at, _)| at == i)
                && (v.is_ascii() || !protected::is_address_field(n))
        })
        .map(|(i, (n, v))| (indices[i], n.trim_end(), v.as_str()))
        .collect();
    let fields: Vec<(String, String)> = indexed
        .iter()
        .map(|(_, n, v)| (n.to_string(), v.to_string()))
        .collect();
    if work.encrypt.is_none() {
        return Some(Protection {
            hp: Hp::Clear,
            outer: fields.clone(),
            fields,
            outer_ops: Vec::new(),
        });
    }
    let mut outer = Vec::with_capacity(fields.len());
    let (mut changes, mut removals) = (Vec::new(), Vec::new());
    for &(index, name, value) in &indexed {
        let name = name.to_string();
        match cfg.policy.outer_value(&name, value) {
            Some(v) if v == value => outer.push((name, value.to_string())),
            Some(v) => {
                outer.push((name.clone(), v.to_string()));
                changes.push(HeaderOp::Change {
                    name,
                    index,
                    value: Some(v.into_owned()),
                });
            }
            None => removals.push(HeaderOp::Change {
                name,
                index,
                value: None,
            }),
        }
    }
    // Deletions last, the highest index of a name first.
    removals.reverse();
    changes.extend(removals);
    Some(Protection {
        hp: Hp::Cipher,
        fields,
        outer,
        outer_ops: changes,
    })
}

/// The header changes that move the Content-* fields into the signed entity
/// and put the new ones on the message.
fn header_ops(headers: &[(String, String)], signed: &sign::Wrapped) -> Vec<HeaderOp> {
    let mut ops = Vec::new();
    let mut ct_count = 0;
    for (name, count) in crate::outcome::content_field_counts(headers) {
        let name = name.to_ascii_lowercase();
        // The first Content-Type is changed in place, keeping its position.
        let first = if name == "content-type" {
            ct_count = count;
            2
        } else {
            1
        };
        for index in (first..=count).rev() {
            ops.push(HeaderOp::Change {
                name: canonical_name(&name),
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
    if values_named(headers, "MIME-Version").next().is_none() {
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

/// Signs and/or encrypts the message: builds the canonical entity from the
/// Content-* fields and the body, signs it, encrypts the result, and returns
/// the changes for the MTA.
pub fn process_message(
    rt: &Runtime,
    work: &Work,
    headers: &[(String, String)],
    body: &[u8],
) -> Outcome {
    // Where encryption is required, a failure never delivers plaintext.
    let fail = |action: FailAction, reason: String| {
        let action = if work.required {
            action.stricter(FailAction::Tempfail)
        } else {
            action
        };
        Outcome::failure(action, reason)
    };
    let content_block = content_header_block(headers, &work.raw_values, body);
    let protection = header_protection(rt, work, headers);
    let mut legacy_body = None;
    let block = match &protection {
        None => content_block,
        Some(p) => {
            let block = protected::payload_block(&content_block, &p.fields, p.hp, &p.outer);
            let lines = match p.hp {
                Hp::Cipher if rt.config.header_protection.legacy_display => {
                    protected::legacy_display_lines(&p.fields, &p.outer)
                }
                _ => Vec::new(),
            };
            match protected::with_legacy_display(&block, body, &lines, 0) {
                Some((b, new_body)) => {
                    legacy_body = Some(new_body);
                    b
                }
                None => block,
            }
        }
    };
    let body = legacy_body.as_deref().unwrap_or(body);
    let capacity = block.len() + body.len() + body.len() / 16 + 2;
    let limits = Limits {
        max_depth: rt.config.max_mime_depth,
        max_parts: rt.config.max_mime_parts,
    };
    // Clear-signed only: the entity is written straight into the new body.
    let mut clear = (work.encrypt.is_none()
        && work.sign.is_some()
        && rt.config.signing.format == crate::config::SignFormat::Clear)
        .then(|| sign::ClearBody::new(capacity));
    let mut entity = Vec::new();
    let out = match clear.as_mut() {
        Some(c) => c.buf_mut(),
        None => {
            entity.reserve(capacity);
            &mut entity
        }
    };
    let transfer = match mime::write_canonical(&block, body, 0, limits, out) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                rt.config.actions.malformed,
                format!("cannot sign safely: {e}"),
            )
        }
    };
    let mut detail = Vec::new();
    let signed = match &work.sign {
        Some(key) => {
            let cfg = &rt.config.signing;
            let date = mime::only_value(headers, "Date");
            let now = crate::mail::date::unix_now();
            let signing_time = sign::signing_time(
                cfg.signing_time,
                cfg.signing_time_window,
                date.as_deref(),
                now,
                &key.cert,
                &key.chain,
            );
            let held = signing_time.filter(|&t| t < now).map(|t| now - t);
            let opts = sign::SignOptions {
                signing_time,
                ..sign::SignOptions::from(cfg)
            };
            let result = crate::metrics::timed(Operation::Sign, || match clear {
                Some(c) => c.finish(key, &opts),
                None => sign::sign_entity(key, &entity, rt.config.signing.format, &opts),
            });
            match result {
                Ok(mut s) => {
                    detail.push(format!("key={}", key.label()));
                    if let Some(secs) = held {
                        detail.push(format!("signing_time=Date-{secs}s"));
                    }
                    // An 8-bit attached message inside the clear part.
                    if s.transfer_encoding.is_none() && transfer == mime::Transfer::EightBit {
                        s.transfer_encoding = Some("8bit");
                    }
                    Some(s)
                }
                Err(e) => return fail(rt.config.actions.internal_error, e.to_string()),
            }
        }
        None => None,
    };
    let wrapped = match (&work.encrypt, rt.config.encrypt.as_ref()) {
        (Some(certs), Some(enc)) => {
            // Sign first, then encrypt the signed entity (RFC 8551 §3.7).
            let inner = match &signed {
                Some(s) => s.to_entity(),
                None => entity,
            };
            // What the recipients announced (harvested) may lower the cipher.
            let announced: Vec<Vec<crate::pki::Cipher>> =
                certs.iter().map(|c| c.ciphers.clone()).collect();
            let cipher = crate::harvest::choose_cipher(enc.cipher, &announced);
            match crate::metrics::timed(Operation::Encrypt, || {
                encrypt::encrypt_entity(certs, &inner, cipher)
            }) {
                Ok(w) => {
                    detail.push(format!("recipients={}", certs.len()));
                    w
                }
                Err(e) => return fail(rt.config.actions.internal_error, e.to_string()),
            }
        }
        _ => match signed {
            Some(s) => s,
            None => return Outcome::unchanged("nothing to do"),
        },
    };
    let action = match (work.sign.is_some(), work.encrypt.is_some()) {
        (true, true) => "signed+encrypted",
        (false, true) => "encrypted",
        _ => "signed",
    };
    let mut ops = header_ops(headers, &wrapped);
    if let Some(p) = &protection {
        ops.extend(p.outer_ops.iter().cloned());
        detail.push(format!("hp={}", p.hp.as_str()));
    }
    Outcome {
        verdict: Verdict::Accept,
        changes: Changes {
            headers: ops,
            body: Some(wrapped.body),
        },
        action,
        reason: (!work.notes.is_empty()).then(|| work.notes.join(", ")),
        detail: Some(detail.join(" ")),
        smime: None,
        harvest: None,
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
        let block = content_header_block(&headers, &[], b"x");
        assert_eq!(
            block,
            b"Content-Type: text/plain;\n\tcharset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nContent-Disposition: inline\r\n"
        );
        let signed = sign::Wrapped {
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
            content_header_block(&h(&[("From", "a@x")]), &[], b"hi"),
            b"Content-Type: text/plain; charset=us-ascii\r\n"
        );
        assert_eq!(
            content_header_block(&h(&[]), &[], "grüß".as_bytes()),
            b"Content-Type: text/plain; charset=utf-8\r\n"
        );
        assert_eq!(
            content_header_block(&h(&[]), &[], b"\xe4"),
            b"Content-Type: text/plain; charset=unknown-8bit\r\n"
        );
    }

    #[test]
    fn smime_messages_are_recognised() {
        let ct = |v: &str| smime_state(&h(&[("Content-Type", v)]));
        assert_eq!(ct("multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=x"), (true, false));
        assert_eq!(
            ct("application/x-pkcs7-mime; smime-type=enveloped-data"),
            (false, true)
        );
        assert_eq!(
            ct("application/pkcs7-mime; smime-type=signed-data"),
            (true, false)
        );
        assert_eq!(
            ct("multipart/signed; protocol=\"application/pgp-signature\""),
            (false, false)
        );
        assert_eq!(ct("text/plain"), (false, false));
    }

    #[test]
    fn duplicate_content_types_are_all_replaced() {
        let headers = h(&[
            ("Content-Type", "text/plain"),
            ("Content-Type", "text/html"),
            ("MIME-Version", "1.0"),
        ]);
        let signed = sign::Wrapped {
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
