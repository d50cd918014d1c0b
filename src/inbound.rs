//! Inbound mail: remove headers that claim to be ours, decrypt a message
//! encrypted to one of our keys (when enabled), verify the S/MIME signature,
//! report it in our own Authentication-Results header, and harvest the
//! certificates of signers who pass. Only decryption changes the body.

use crate::address;
use crate::auth_results;
use crate::config::{Config, FailAction};
use crate::decrypt::{self, Decryption};
use crate::mime::{self, ContentType};
use crate::outcome::{Changes, HeaderOp, Outcome, Verdict};
use crate::verify::{self, SmimeResult};
use std::sync::Arc;

const AR: &str = "Authentication-Results";
/// Says that (and how) a message was decrypted at the gateway, so that no
/// reader takes it for mail that travelled in plaintext.
pub const DECRYPTED: &str = "X-SMIME-Decrypted";

/// Work left for end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Headers that claim to be ours (our authserv-id, our decryption
    /// header), to delete: removing them keeps a sender from forging them.
    pub removals: Vec<HeaderOp>,
    /// Whether the body is needed (signed, encrypted, or possibly mixed).
    pub needs_body: bool,
}

fn first<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn content_type(headers: &[(String, String)]) -> Option<ContentType> {
    first(headers, "Content-Type").and_then(|v| ContentType::parse(&mime::unfold(v)))
}

/// application/pkcs7-mime that is (or, as a `.p7m` without smime-type, may
/// be) enveloped or authEnveloped data.
fn may_be_enveloped(ct: &ContentType) -> bool {
    if !matches!(
        ct.mime_type.as_str(),
        "application/pkcs7-mime" | "application/x-pkcs7-mime"
    ) {
        return false;
    }
    match ct.param("smime-type").map(str::to_ascii_lowercase) {
        Some(t) => t == "enveloped-data" || t == "authenveloped-data",
        None => ct
            .param("name")
            .unwrap_or("")
            .to_ascii_lowercase()
            .ends_with(".p7m"),
    }
}

/// What to do once the body has arrived.
#[derive(Debug)]
pub enum Plan {
    Verify(Pending),
    /// Decided already; the rest of the message is not needed.
    Done(Outcome),
}

fn decryption_on(cfg: &Config) -> bool {
    cfg.decrypt && !cfg.keys.is_empty()
}

/// Deletions of the fields named `name` for which `ours` holds, last first.
fn deletions(
    headers: &[(String, String)],
    name: &str,
    ours: impl Fn(&str) -> bool,
) -> Vec<HeaderOp> {
    let idx: Vec<usize> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .enumerate()
        .filter(|(_, (_, v))| ours(&mime::unfold(v)))
        .map(|(i, _)| i + 1)
        .collect();
    idx.into_iter()
        .rev()
        .map(|index| HeaderOp::Change {
            name: name.into(),
            index,
            value: None,
        })
        .collect()
}

/// Decides at end of headers.
pub fn plan(cfg: &Config, headers: &[(String, String)]) -> Plan {
    let decrypt_on = decryption_on(cfg);
    if cfg.verify.is_none() && !decrypt_on {
        return Plan::Done(Outcome::unchanged(
            "inbound, verification and decryption off",
        ));
    }
    let mut removals = Vec::new();
    if cfg.verify.is_some() {
        removals.extend(deletions(headers, AR, |v| {
            auth_results::claims_our_id(v, &cfg.authserv_id)
        }));
    }
    if decrypt_on {
        removals.extend(deletions(headers, DECRYPTED, |_| true));
    }
    let needs_body = content_type(headers).is_some_and(|ct| {
        verify::signed_form(&ct).is_some()
            || (decrypt_on && (may_be_enveloped(&ct) || ct.is_multipart()))
    });
    if !needs_body && removals.is_empty() {
        return Plan::Done(Outcome::unchanged("not signed"));
    }
    Plan::Verify(Pending {
        removals,
        needs_body,
    })
}

/// The EnvelopedData that is the whole message: the body itself, or the
/// direct content of an outer signature (encrypt-then-sign: that signature
/// vouches for ciphertext only, and is not counted, as Thunderbird does).
fn whole_body_encryption(ct: &ContentType, cte: Option<&str>, body: &[u8]) -> Option<Vec<u8>> {
    let der_if_enveloped = |ct: &ContentType, cte: Option<&str>, body: &[u8]| -> Option<Vec<u8>> {
        if !may_be_enveloped(ct) {
            return None;
        }
        let der = verify::decode_body(cte, body).ok()?;
        decrypt::cms_type(&der)
            .filter(|n| decrypt::is_enveloped(*n))
            .map(|_| der)
    };
    if let Some(der) = der_if_enveloped(ct, cte, body) {
        return Some(der);
    }
    verify::signed_form(ct)?;
    let content = verify::signed_content(ct, cte, body)?;
    let (h, b) = mime::split_entity(&content);
    let fields = mime::parse_fields(h);
    let inner = mime::field_value(&fields, "Content-Type").and_then(|v| ContentType::parse(&v))?;
    der_if_enveloped(
        &inner,
        mime::field_value(&fields, "Content-Transfer-Encoding").as_deref(),
        b,
    )
}

/// A multipart that carries an encrypted part beside plaintext ones: never
/// decrypted (EFAIL), but said so.
fn has_encrypted_part(ct: &ContentType, body: &[u8]) -> bool {
    let Some(boundary) = ct.param("boundary") else {
        return false;
    };
    let Ok(mp) = mime::split_multipart(body, boundary) else {
        return false;
    };
    mp.parts.iter().any(|p| {
        let (h, _) = mime::split_entity(p);
        let fields = mime::parse_fields(h);
        mime::field_value(&fields, "Content-Type")
            .and_then(|v| ContentType::parse(&v))
            .is_some_and(|c| may_be_enveloped(&c))
    })
}

/// Verifies an entity and reports the result: our header on top, and the
/// signer's certificate harvested when it passes.
struct Verified {
    ops: Vec<HeaderOp>,
    detail: Option<String>,
    notes: Vec<String>,
    bad: bool,
}

fn verify_and_report(
    cfg: &Config,
    headers: &[(String, String)],
    ct: &ContentType,
    cte: Option<&str>,
    body: &[u8],
    now: Option<i64>,
    decrypted: bool,
) -> Verified {
    let mut r = Verified {
        ops: Vec::new(),
        detail: None,
        notes: Vec::new(),
        bad: false,
    };
    let Some(ver) = &cfg.verify else { return r };
    let froms: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("From"))
        .map(|(_, v)| v.as_str())
        .collect();
    let from = match froms.as_slice() {
        [one] => address::single_address(&mime::unfold(one)),
        _ => None,
    };
    let date = first(headers, "Date").and_then(|d| verify::parse_date(&mime::unfold(d)));
    let ctx = verify::Context {
        trust: &ver.trust,
        settings: &ver.settings,
        from: from.as_deref(),
        date,
        now,
    };
    let Some(mut v) = verify::verify_entity(&ctx, ct, cte, body, "1", 0) else {
        r.notes.push("not signed".into());
        return r;
    };
    let mut detail = format!("smime={}", v.result);
    if let Some(id) = &v.identifier {
        detail.push_str(&format!(" signer={id}"));
    }
    if v.result == SmimeResult::Pass {
        if let (Some(dir), Some(signer)) = (&cfg.harvest_dir, &v.signer) {
            match crate::harvest::store(dir, signer) {
                Ok(addrs) if !addrs.is_empty() => {
                    // Visible to the next outbound message at once.
                    if let Some(enc) = &cfg.encrypt {
                        addrs.iter().for_each(|a| enc.certs.forget(a));
                    }
                    detail.push_str(&format!(" harvested={}", addrs.join(",")));
                }
                Ok(_) => {}
                Err(e) => r
                    .notes
                    .push(format!("cannot harvest into {}: {e}", dir.display())),
            }
        }
    }
    if decrypted {
        v.reason = Some(match v.reason.take() {
            Some(why) => format!("{why}; decrypted at gateway"),
            None => "decrypted at gateway".into(),
        });
    }
    r.notes.extend(v.reason.clone());
    r.bad = matches!(v.result, SmimeResult::Fail | SmimeResult::Permerror);
    r.ops.push(HeaderOp::Insert {
        index: 0,
        name: AR.into(),
        value: auth_results::header_value(&cfg.authserv_id, &v),
    });
    r.detail = Some(detail);
    r
}

fn outcome(
    action: &'static str,
    ops: Vec<HeaderOp>,
    body: Option<Vec<u8>>,
    detail: Option<String>,
    notes: Vec<String>,
) -> Outcome {
    let reason = notes.join(", ");
    Outcome {
        verdict: Verdict::Accept,
        changes: Changes { headers: ops, body },
        action,
        reason: (!reason.is_empty()).then_some(reason),
        detail,
    }
}

/// At end of message. `body` is `None` when the message was too large to
/// keep; `rcpts` are the envelope recipients (whose keys may decrypt).
pub fn verify_message(
    cfg: &Config,
    p: &Pending,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    rcpts: &[String],
    now: Option<i64>,
) -> Outcome {
    let mut ops = p.removals.clone();
    let mut notes = Vec::new();
    for name in [AR, DECRYPTED] {
        let n = ops
            .iter()
            .filter(|o| matches!(o, HeaderOp::Change { name: x, .. } if x == name))
            .count();
        if n > 0 {
            notes.push(format!("removed {n} forged {name}"));
        }
    }
    let ct = content_type(headers);
    let cte = first(headers, "Content-Transfer-Encoding").map(mime::unfold);

    let Some(body) = body else {
        // Signed, but beyond max_message_size: say so rather than guess.
        if cfg.verify.is_some()
            && ct
                .as_ref()
                .is_some_and(|c| verify::signed_form(c).is_some())
        {
            let v = verify::Verdict::error(
                SmimeResult::Neutral,
                "1",
                format!(
                    "message larger than {} bytes not verified",
                    cfg.max_message_size
                ),
            );
            ops.push(HeaderOp::Insert {
                index: 0,
                name: AR.into(),
                value: auth_results::header_value(&cfg.authserv_id, &v),
            });
            return outcome("verified", ops, None, Some("smime=neutral".into()), notes);
        }
        return outcome("unchanged", ops, None, None, notes);
    };
    let Some(ct) = ct else {
        notes.push("not signed".into());
        return outcome("unchanged", ops, None, None, notes);
    };

    if let Some(der) = whole_body_encryption(&ct, cte.as_deref(), body) {
        return decrypt_message(cfg, ops, notes, &der, headers, rcpts, now);
    }
    if decryption_on(cfg)
        && ct.is_multipart()
        && verify::signed_form(&ct).is_none()
        && has_encrypted_part(&ct, body)
    {
        let value = format!(
            "no (encrypted part mixed with plaintext parts, not decrypted); by={}",
            cfg.authserv_id
        );
        ops.push(HeaderOp::Insert {
            index: 0,
            name: DECRYPTED.into(),
            value,
        });
        notes.push("encrypted part mixed with plaintext: not decrypted".into());
        return outcome("unchanged", ops, None, None, notes);
    }

    let v = verify_and_report(cfg, headers, &ct, cte.as_deref(), body, now, false);
    notes.extend(v.notes);
    if v.bad && cfg.actions.bad_signature != FailAction::Accept {
        let mut o = Outcome::failure(cfg.actions.bad_signature, notes.join(", "));
        o.detail = v.detail;
        return o;
    }
    let action = if v.detail.is_some() {
        "verified"
    } else {
        "unchanged"
    };
    ops.extend(v.ops);
    outcome(action, ops, None, v.detail, notes)
}

/// Decrypts a message that is one EnvelopedData, with the keys of its
/// recipients; the plaintext entity replaces the body and Content-* fields.
fn decrypt_message(
    cfg: &Config,
    mut ops: Vec<HeaderOp>,
    mut notes: Vec<String>,
    der: &[u8],
    headers: &[(String, String)],
    rcpts: &[String],
    now: Option<i64>,
) -> Outcome {
    if !decryption_on(cfg) {
        notes.push("encrypted; decryption off".into());
        return outcome("unchanged", ops, None, None, notes);
    }
    let mut keys: Vec<Arc<crate::keystore::SigningKey>> = Vec::new();
    for r in rcpts {
        if let Some(k) = cfg.keys.find(r) {
            if !keys.iter().any(|x| x.name == k.name) {
                keys.push(Arc::clone(k));
            }
        }
    }
    // The plaintext goes to every envelope recipient: decrypt only when each
    // of them could have decrypted it (no one reads another's mail by
    // adding himself as a recipient).
    let every_recipient = !rcpts.is_empty()
        && rcpts.iter().all(|r| {
            cfg.keys
                .find(r)
                .is_some_and(|k| decrypt::is_addressed(der, &k.cert))
        });
    if !every_recipient {
        let any = keys.iter().any(|k| decrypt::is_addressed(der, &k.cert));
        notes.push(if any {
            "not decrypted: not every recipient holds a key it is encrypted to".into()
        } else {
            "encrypted to keys we do not hold".into()
        });
        return outcome("unchanged", ops, None, None, notes);
    }
    match decrypt::decrypt(der, &keys) {
        Decryption::NotForUs => {
            notes.push("encrypted to keys we do not hold".into());
            outcome("unchanged", ops, None, None, notes)
        }
        Decryption::Failed(why) => {
            let reason = format!("decryption failed: {why}");
            if cfg.actions.decrypt_failed != FailAction::Accept {
                return Outcome::failure(cfg.actions.decrypt_failed, reason);
            }
            let value = format!(
                "failed ({}); by={}",
                why.replace(['(', ')'], ""),
                cfg.authserv_id
            );
            ops.push(HeaderOp::Insert {
                index: 0,
                name: DECRYPTED.into(),
                value,
            });
            notes.push(reason);
            outcome("unchanged", ops, None, None, notes)
        }
        Decryption::Decrypted {
            plaintext,
            key,
            kind,
        } => {
            let (h, b) = mime::split_entity(&plaintext);
            let fields = mime::parse_fields(h);
            let mut body = Vec::with_capacity(b.len() + b.len() / 16);
            mime::push_crlf(&mut body, b);
            let new_fields: Vec<(String, String)> = fields
                .iter()
                .filter(|f| crate::mime::is_content_field(f.name))
                .map(|f| (f.name.to_string(), f.unfolded()))
                .collect();
            ops.extend(crate::outcome::replace_content_fields(headers, &new_fields));
            let inner_ct = mime::field_value(&fields, "Content-Type")
                .and_then(|v| ContentType::parse(&v))
                .unwrap_or(ContentType {
                    mime_type: "text/plain".into(),
                    params: vec![],
                });
            let inner_cte = mime::field_value(&fields, "Content-Transfer-Encoding");
            let v = verify_and_report(
                cfg,
                headers,
                &inner_ct,
                inner_cte.as_deref(),
                &body,
                now,
                true,
            );
            notes.extend(v.notes);
            if v.bad && cfg.actions.bad_signature != FailAction::Accept {
                let mut o = Outcome::failure(cfg.actions.bad_signature, notes.join(", "));
                o.detail = v.detail;
                return o;
            }
            ops.extend(v.ops);
            ops.push(HeaderOp::Insert {
                index: 0,
                name: DECRYPTED.into(),
                value: format!("yes; by={}; key={key}; type={kind}", cfg.authserv_id),
            });
            let detail = Some(match v.detail {
                Some(d) => format!("key={key} {d}"),
                None => format!("key={key}"),
            });
            outcome("decrypted", ops, Some(body), detail, notes)
        }
    }
}
