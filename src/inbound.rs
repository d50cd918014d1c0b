//! Inbound mail, in one pass: remove what claims to be ours, identify the
//! structure once, decrypt a message encrypted to one of our keys (when
//! enabled), verify the S/MIME signature, harvest the signer's certificate,
//! and report in our own Authentication-Results header. Only decryption
//! changes the body. The rules are in doc/inbound-verdicts.md.

use crate::address::{self, FromIdentity};
use crate::auth_results;
use crate::config::FailAction;
use crate::decrypt::{self, Decryption};
use crate::metrics::Operation;
use crate::mime::{self, is_named, values_named, ContentType, HiddenField, SmimeKind};
use crate::outcome::{Changes, HeaderOp, Outcome, Verdict};
use crate::runtime::Runtime;
use crate::verify::{self, FromView, SmimeResult};
use std::sync::Arc;

const AR: &str = "Authentication-Results";
/// Says that (and how) a message was decrypted at the gateway, so that no
/// reader takes it for mail that travelled in plaintext.
pub const DECRYPTED: &str = "X-SMIME-Decrypted";
/// What every decryption failure says, to the sender and in the header:
/// no detail a padding oracle could use (the log has the reason).
const DECRYPTION_FAILED: &str = "decryption failed";

/// Work left for end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Headers that claim to be ours (our authserv-id, our decryption
    /// header), to delete, and fields hiding them behind a bare CR, to
    /// flatten: a sender must not forge them.
    pub removals: Vec<HeaderOp>,
    /// Tags of the visible verdict in the Subject, and info headers, that
    /// the sender wrote: taken out (`[display]`).
    pub forged_display: Vec<HeaderOp>,
    /// How many Subject fields had tags, and how many info headers came.
    pub forged_counts: (usize, usize),
    /// Whether the body is needed (signed, encrypted, or possibly mixed).
    pub needs_body: bool,
}

/// application/pkcs7-mime that is (or, as a `.p7m` without smime-type, may
/// be) enveloped or authEnveloped data.
fn may_be_enveloped(ct: &ContentType) -> bool {
    ct.smime_kind().may_be_enveloped()
}

/// What to do once the body has arrived.
#[derive(Debug)]
pub enum Plan {
    Verify(Pending),
    /// Decided already; the rest of the message is not needed.
    Done(Outcome),
}

fn decryption_on(rt: &Runtime) -> bool {
    rt.config.decrypt && !rt.keys.is_empty()
}

/// Header changes that take out what claims to be ours: fields named
/// `name` for which `ours` holds are deleted (last first), and a field that
/// hides one behind a bare CR is flattened so no reader sees it.
fn forged_header_ops(
    headers: &[(String, String)],
    hidden: &[HiddenField],
    name: &str,
    ours: impl Fn(&str) -> bool,
) -> Vec<HeaderOp> {
    let mut ops = Vec::new();
    // Ascending: fields are looked at in order.
    let deleted: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|(_, (n, v))| is_named(n, name) && ours(&mime::unfold(v)))
        .map(|(i, _)| i)
        .collect();
    let mut carriers: Vec<usize> = hidden
        .iter()
        .filter(|h| is_named(&h.name, name) && ours(&h.value))
        .map(|h| h.carrier)
        .filter(|c| deleted.binary_search(c).is_err())
        .collect();
    carriers.dedup();
    if deleted.is_empty() && carriers.is_empty() {
        return ops;
    }
    // The name as the MTA matches it (Postfix: without the white space of
    // `Name :`), and each field's index among those of that name.
    let name_of = |i: usize| headers[i].0.trim_end_matches([' ', '\t']).to_string();
    let index = crate::outcome::field_indices(headers);
    let index_of = |i: usize| index[i];
    // Rewrites first: a deletion may renumber the fields after it.
    for c in carriers {
        ops.push(HeaderOp::Change {
            name: name_of(c),
            index: index_of(c),
            value: Some(mime::flatten_hidden_lines(&headers[c].1)),
        });
    }
    for &i in deleted.iter().rev() {
        ops.push(HeaderOp::Change {
            name: name_of(i),
            index: index_of(i),
            value: None,
        });
    }
    ops
}

/// The visible verdict's tags a sender wrote into a Subject, and its info
/// header: also behind a bare CR (the carrier flattened); with how many
/// Subject fields had tags and how many info headers there were.
fn forged_display(
    rt: &Runtime,
    headers: &[(String, String)],
    hidden: &[HiddenField],
) -> (Vec<HeaderOp>, (usize, usize)) {
    let display = &rt.config.display;
    let templates: Vec<&str> = display.tags().collect();
    let mut ops = Vec::new();
    if !templates.is_empty() {
        let tagged = |v: &str| crate::visible::without_tags(v, &templates).is_some();
        ops.extend(
            forged_header_ops(headers, hidden, "Subject", tagged)
                .into_iter()
                .filter(|o| matches!(o, HeaderOp::Change { value: Some(_), .. })),
        );
    }
    let mut infos = 0;
    if let Some((name, _)) = &display.info {
        let found = forged_header_ops(headers, hidden, name, |_| true);
        infos = found.len();
        ops.extend(found);
    }
    // Last: a carrier flattened above may be a Subject, whose cleaned
    // value must be the one that stays.
    let (subjects, tags) = crate::visible::subject_ops(display, headers);
    ops.extend(subjects);
    (ops, (tags, infos))
}

/// Decides at end of headers.
pub fn plan(rt: &Runtime, headers: &[(String, String)]) -> Plan {
    let decrypt_on = decryption_on(rt);
    let hidden = mime::hidden_fields(headers);
    let mut removals = Vec::new();
    if rt.verify.is_some() {
        removals.extend(forged_header_ops(headers, &hidden, AR, |v| {
            auth_results::claims_our_id(v, &rt.config.authserv_id)
        }));
    }
    // Ours whether or not decryption is on: no reader may take a sender's
    // for the gateway's word.
    removals.extend(forged_header_ops(headers, &hidden, DECRYPTED, |_| true));
    let (forged_display, forged_counts) = forged_display(rt, headers, &hidden);
    if rt.verify.is_none() && !decrypt_on {
        return if removals.is_empty() && forged_display.is_empty() {
            Plan::Done(Outcome::unchanged(
                "inbound, verification and decryption off",
            ))
        } else {
            Plan::Verify(Pending {
                removals,
                forged_display,
                forged_counts,
                needs_body: false,
            })
        };
    }
    let needs_body = values_named(headers, "Content-Type")
        .map(mime::unfold)
        .chain(
            hidden
                .iter()
                .filter(|h| is_named(&h.name, "Content-Type"))
                .map(|h| h.value.clone()),
        )
        .filter_map(|v| ContentType::parse(&v))
        .any(|ct| {
            looks_signed(&ct)
                || (decrypt_on
                    && (may_be_enveloped(&ct)
                        || ct.is_multipart()
                        || ct.mime_type == "application/octet-stream"))
        });
    if !needs_body && removals.is_empty() && forged_display.is_empty() {
        return Plan::Done(Outcome::unchanged("not signed"));
    }
    Plan::Verify(Pending {
        removals,
        forged_display,
        forged_counts,
        needs_body,
    })
}

/// What a reader that reads RFC 2231 parameters, or the other of two
/// fields, may take for S/MIME: we must not take it for unsigned.
fn looks_signed(c: &ContentType) -> bool {
    let kind = c.smime_kind();
    kind.is_pkcs7_mime() || matches!(kind, SmimeKind::ClearSigned | SmimeKind::OtherSigned)
}

/// The message's structure, read once from its header.
struct Structure {
    ct: Option<ContentType>,
    cte: Option<String>,
    /// Why the unsigned header can be read two ways (duplicate or hidden
    /// Content-Type, ambiguous parameters...).
    problem: Option<&'static str>,
    /// Whether any Content-Type (also a duplicate) says signed.
    signed: bool,
    /// Whether a reader may take it for S/MIME, so that ambiguity matters.
    looks_signed: bool,
}

fn structure(headers: &[(String, String)], hidden: &[HiddenField]) -> Structure {
    let cts: Vec<String> = values_named(headers, "Content-Type")
        .map(mime::unfold)
        .collect();
    let ctes: Vec<String> = values_named(headers, "Content-Transfer-Encoding")
        .map(mime::unfold)
        .collect();
    let parsed: Vec<ContentType> = cts.iter().filter_map(|v| ContentType::parse(v)).collect();
    let hidden_ct = hidden
        .iter()
        .any(|h| mime::is_content_field(&h.name) || is_named(&h.name, "MIME-Version"));
    let problem = if hidden_ct {
        Some("Content-* field hidden in another field")
    } else {
        verify::header_problem(&cts, &ctes)
    };
    let hidden_cts = hidden
        .iter()
        .filter(|h| is_named(&h.name, "Content-Type"))
        .filter_map(|h| ContentType::parse(&h.value));
    Structure {
        looks_signed: parsed.iter().any(looks_signed)
            || hidden_cts.clone().any(|c| looks_signed(&c)),
        signed: parsed.iter().any(|c| verify::signed_form(c).is_some()),
        ct: parsed.into_iter().next(),
        cte: ctes.into_iter().next(),
        problem,
    }
}

/// The From a reader sees: one field, one mailbox, nothing that shows
/// another address, no From hidden in another field.
fn from_view<'a>(
    headers: &[(String, String)],
    hidden: &[HiddenField],
    identity: &'a mut Option<FromIdentity>,
) -> FromView<'a> {
    if hidden.iter().any(|h| is_named(&h.name, "From")) {
        return FromView::Unusable {
            address: None,
            why: "ambiguous From: From hidden in another field",
        };
    }
    let Some(from) = mime::only_value(headers, "From") else {
        return FromView::Unusable {
            address: None,
            why: "ambiguous From: not exactly one From field",
        };
    };
    *identity = Some(address::from_identity(&from));
    match identity.as_ref().expect("just set") {
        FromIdentity::One(a) => FromView::One(a),
        FromIdentity::ShowsOther { address, what } => FromView::Unusable {
            address: Some(address),
            why: match *what {
                "comment" => "From shows another address (comment)",
                "group name" => "From shows another address (group name)",
                "encoded word" => "From shows another address (encoded word)",
                "quoted local part" => "From shows another address (quoted local part)",
                _ => "From shows another address (display name)",
            },
        },
        FromIdentity::Ambiguous(_) => FromView::Unusable {
            address: None,
            why: "ambiguous From",
        },
    }
}

/// The EnvelopedData that is the whole message: the body itself, or the
/// direct content of an outer signature (encrypt-then-sign: that signature
/// vouches for ciphertext only, and is not counted, as Thunderbird does).
fn whole_body_encryption(ct: &ContentType, cte: Option<&str>, body: &[u8]) -> Option<Vec<u8>> {
    // An application/octet-stream `.p7m` is left alone (and reported).
    if let Some(der) = may_be_enveloped(ct)
        .then(|| enveloped_der(ct, cte, body))
        .flatten()
    {
        return Some(der);
    }
    verify::signed_form(ct)?;
    let content = verify::signed_content(ct, cte, body)?;
    let (h, b) = mime::split_entity(&content);
    let fields = mime::parse_fields(h);
    let inner = mime::field_value(&fields, "Content-Type").and_then(|v| ContentType::parse(&v))?;
    let inner_cte = mime::field_value(&fields, "Content-Transfer-Encoding");
    if !may_be_enveloped(&inner) {
        return None;
    }
    enveloped_der(&inner, inner_cte.as_deref(), b)
}

fn enveloped_der(ct: &ContentType, cte: Option<&str>, body: &[u8]) -> Option<Vec<u8>> {
    let maybe =
        may_be_enveloped(ct) || (ct.mime_type == "application/octet-stream" && ct.has_p7m_name());
    if !maybe {
        return None;
    }
    let der = verify::decode_body(cte, body).ok()?;
    decrypt::cms_type(&der)
        .filter(|n| decrypt::is_enveloped(*n))
        .map(|_| der)
}

/// An encrypted entity we leave alone (EFAIL: never merged with plaintext
/// from outside it), and why; `None` when there is none. Bounded by the
/// configured depth and part limits.
fn unhandled_encryption(
    rt: &Runtime,
    ct: &ContentType,
    cte: Option<&str>,
    body: &[u8],
    depth: usize,
    parts: &mut usize,
) -> Option<&'static str> {
    if depth > rt.config.max_mime_depth || *parts > rt.config.max_mime_parts {
        return None;
    }
    if enveloped_der(ct, cte, body).is_some() {
        return Some(if depth == 0 {
            "application/octet-stream encrypted attachment"
        } else {
            "encrypted part nested under other layers"
        });
    }
    // The parts are looked at where they lie; only an opaque signature's
    // content is a copy.
    let owned;
    let inner: Vec<&[u8]> = if verify::signed_form(ct).is_some() {
        owned = verify::signed_content(ct, cte, body);
        owned.iter().map(|c| &c[..]).collect()
    } else if ct.is_multipart() {
        mime::split_multipart(body, ct.param("boundary")?)
            .ok()?
            .parts
    } else {
        return None;
    };
    for entity in inner {
        *parts += 1;
        let (h, b) = mime::entity_parts(entity);
        let fields = mime::parse_fields(h);
        let Some(ict) =
            mime::field_value(&fields, "Content-Type").and_then(|v| ContentType::parse(&v))
        else {
            continue;
        };
        let icte = mime::field_value(&fields, "Content-Transfer-Encoding");
        if let Some(why) = unhandled_encryption(rt, &ict, icte.as_deref(), b, depth + 1, parts) {
            return Some(
                if depth == 0 && ct.is_multipart() && verify::signed_form(ct).is_none() {
                    "encrypted part mixed with plaintext parts"
                } else {
                    why
                },
            );
        }
    }
    None
}

/// Verifies an entity and reports the result: our header on top, and the
/// signer's certificate harvested when it passes.
struct Verified {
    ops: Vec<HeaderOp>,
    detail: Option<String>,
    notes: Vec<String>,
    result: Option<SmimeResult>,
    /// For the directory, written after the reply, under this address.
    harvest: Option<Box<(crate::pki::SignerCert, String)>>,
    /// The signer's address, for the visible verdict.
    signer: Option<String>,
    decrypted: bool,
    /// The Subject a decryption restored from the protected header.
    subject: Option<String>,
}

impl Verified {
    fn bad(&self) -> bool {
        matches!(
            self.result,
            Some(SmimeResult::Fail | SmimeResult::Permerror)
        )
    }
}

/// What the verification of one message needs from its header.
struct Inputs<'a> {
    from: FromView<'a>,
    date: Option<i64>,
    now: Option<i64>,
    /// The end of the message's lookup budget (OCSP, CRLs, AIA).
    deadline: std::time::Instant,
}

fn report(rt: &Runtime, mut v: verify::Verdict, decrypted: bool, harvest: bool) -> Verified {
    let mut r = Verified {
        ops: Vec::new(),
        detail: None,
        notes: Vec::new(),
        result: Some(v.result),
        harvest: None,
        signer: v
            .identifier
            .clone()
            .filter(|_| v.result == SmimeResult::Pass),
        decrypted,
        subject: None,
    };
    let mut detail = format!("smime={}", v.result);
    if let Some(id) = &v.identifier {
        detail.push_str(&format!(" signer={id}"));
    }
    if harvest && rt.config.harvest_writes && v.result == SmimeResult::Pass {
        if let (Some(_), Some(signer), Some(from)) = (&rt.harvest_ldap, &v.signer, &v.identifier) {
            // The directory is every node's, and every client's address
            // book: only the From the signature was verified for, and never
            // an address of ours (a certificate someone else holds for it
            // must not be published as our user's).
            if rt.keys.find(from).is_some() {
                detail.push_str(" harvest=skipped(own address)");
            } else {
                r.harvest = Some(Box::new((signer.clone(), from.to_ascii_lowercase())));
                detail.push_str(" harvest=queued");
            }
        }
        if let (Some(dir), Some(signer)) = (&rt.config.harvest_dir, &v.signer) {
            match crate::harvest::store(dir, signer) {
                Ok(addrs) if !addrs.is_empty() => {
                    // Visible to the next outbound message at once.
                    if let Some(certs) = &rt.certs {
                        addrs.iter().for_each(|a| certs.forget(a));
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
    r.ops.push(HeaderOp::Insert {
        index: 0,
        name: AR.into(),
        value: auth_results::header_value(&rt.config.authserv_id, &v),
    });
    r.detail = Some(detail);
    r
}

fn verify_entity(
    rt: &Runtime,
    inputs: &Inputs<'_>,
    ct: &ContentType,
    cte: Option<&str>,
    body: &[u8],
) -> Option<verify::Verdict> {
    let ver = rt.verify.as_ref()?;
    let ctx = verify::Context {
        trust: &ver.trust,
        settings: &ver.settings,
        from: inputs.from,
        date: inputs.date,
        now: inputs.now,
        online: rt.online.as_deref(),
        deadline: inputs.deadline,
    };
    let started = std::time::Instant::now();
    let verdict = verify::verify_entity(&ctx, ct, cte, body, "1", 0);
    // Counted when there was a signature to verify.
    if verdict.is_some() {
        crate::metrics::observe(Operation::Verify, started.elapsed());
    }
    verdict
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
        smime: None,
        harvest: None,
    }
}

/// The outcome for a verified message: `bad_signature` acts on fail and
/// permerror, never with a partial change.
#[allow(clippy::too_many_arguments)]
fn finish(
    rt: &Runtime,
    mut ops: Vec<HeaderOp>,
    mut notes: Vec<String>,
    v: Verified,
    action: &'static str,
    body: Option<Vec<u8>>,
    headers: &[(String, String)],
) -> Outcome {
    notes.extend(v.notes.iter().cloned());
    if v.bad() && rt.config.actions.bad_signature != FailAction::Accept {
        let mut o = Outcome::failure(rt.config.actions.bad_signature, notes.join(", "));
        o.detail = v.detail;
        o.smime = v.result;
        return o;
    }
    ops.extend(v.ops);
    ops.extend(crate::visible::ops(
        &rt.config.display,
        headers,
        v.subject.as_deref(),
        v.result,
        v.signer.as_deref(),
        v.decrypted,
    ));
    let mut o = outcome(action, ops, body, v.detail, notes);
    o.smime = v.result;
    o.harvest = v.harvest;
    o
}

fn decrypted_header(rt: &Runtime, state: &str) -> HeaderOp {
    HeaderOp::Insert {
        index: 0,
        name: DECRYPTED.into(),
        value: format!("{state}; by={}", rt.config.authserv_id),
    }
}

/// At end of message. `body` is `None` when the message was too large to
/// keep; `rcpts` are the envelope recipients (whose keys may decrypt).
pub fn verify_message(
    rt: &Runtime,
    p: &Pending,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    rcpts: &[String],
    now: Option<i64>,
) -> Outcome {
    let o = verify_message_once(rt, p, headers, body, rcpts, now);
    // Every value is built safe; this is the last line of defence: a
    // field we cannot write as one field is a failure, never a pass.
    match o.changes.headers.iter().find_map(HeaderOp::unsafe_name) {
        None => o,
        Some(name) => Outcome::failure(
            rt.config.actions.internal_error,
            format!("refusing to write an unsafe {name} header"),
        ),
    }
}

fn verify_message_once(
    rt: &Runtime,
    p: &Pending,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    rcpts: &[String],
    now: Option<i64>,
) -> Outcome {
    let mut ops = p.removals.clone();
    let mut notes = Vec::new();
    let mut deleted = 0;
    for name in [AR, DECRYPTED] {
        let n = ops
            .iter()
            .filter(
                |o| matches!(o, HeaderOp::Change { name: x, value: None, .. } if is_named(x, name)),
            )
            .count();
        if n > 0 {
            notes.push(format!("removed {n} forged {name}"));
        }
        deleted += n;
    }
    let flattened = ops.len() - deleted;
    if flattened > 0 {
        notes.push(format!(
            "flattened {flattened} field(s) hiding a forged header"
        ));
    }
    ops.extend(p.forged_display.iter().cloned());
    match p.forged_counts {
        (0, _) => {}
        (1, _) => notes.push("removed a forged subject tag".into()),
        (n, _) => notes.push(format!("removed forged tags from {n} Subject fields")),
    }
    if let (n @ 1.., Some((name, _))) = (p.forged_counts.1, &rt.config.display.info) {
        notes.push(format!("removed {n} forged {name}"));
    }
    if rt.verify.is_none() && !decryption_on(rt) {
        return outcome("unchanged", ops, None, None, notes);
    }
    let hidden = mime::hidden_fields(headers);
    let s = structure(headers, &hidden);
    let mut identity = None;
    let inputs = Inputs {
        from: from_view(headers, &hidden, &mut identity),
        date: values_named(headers, "Date")
            .next()
            .and_then(|d| verify::parse_date(&mime::unfold(d))),
        now,
        deadline: std::time::Instant::now() + rt.config.lookup_budget,
    };
    let verify_on = rt.verify.is_some();

    // A signed message with an ambiguous unsigned header, or too large to
    // check: no limit may turn a failure into something milder.
    let early = if !verify_on || !s.looks_signed {
        None
    } else if let Some(why) = s.problem {
        Some(verify::Verdict::error(SmimeResult::Permerror, "1", why))
    } else if body.is_none() && s.signed {
        Some(verify::Verdict::error(
            SmimeResult::Permerror,
            "1",
            format!(
                "message larger than {} bytes not verified",
                rt.config.max_message_size
            ),
        ))
    } else {
        None
    };
    if let Some(v) = early {
        let r = report(rt, v, false, false);
        return finish(rt, ops, notes, r, "verified", None, headers);
    }
    let (Some(body), Some(ct)) = (body, s.ct.as_ref()) else {
        notes.push("not signed".into());
        return outcome("unchanged", ops, None, None, notes);
    };
    let cte = s.cte.as_deref();

    if decryption_on(rt) {
        if let Some(der) = whole_body_encryption(ct, cte, body) {
            if let Some(o) =
                decrypt_message(rt, &mut ops, &mut notes, &der, &inputs, headers, rcpts)
            {
                return o;
            }
        } else if let Some(why) = unhandled_encryption(rt, ct, cte, body, 0, &mut 0) {
            ops.push(decrypted_header(rt, &format!("no ({why}, not decrypted)")));
            notes.push(format!("{why}: not decrypted"));
        }
    } else if may_be_enveloped(ct) {
        notes.push("encrypted; decryption off".into());
        return outcome("unchanged", ops, None, None, notes);
    }
    let Some(v) = verify_entity(rt, &inputs, ct, cte, body) else {
        notes.push("not signed".into());
        let action = if ops.is_empty() {
            "unchanged"
        } else {
            "reported"
        };
        return outcome(action, ops, None, None, notes);
    };
    let mut v = v;
    check_protection(&mut v, headers, false);
    let r = report(rt, v, false, true);
    finish(rt, ops, notes, r, "verified", None, headers)
}

/// Decrypts a message that is one EnvelopedData, with the keys of its
/// recipients; the plaintext entity replaces the body and Content-* fields
/// when it is authenticated (doc/inbound-verdicts.md §7). `None`: the
/// message stays as received (not ours, withheld, failed and accepted) and
/// is verified as a reader will see it; `ops` and `notes` say why.
fn decrypt_message(
    rt: &Runtime,
    ops: &mut Vec<HeaderOp>,
    notes: &mut Vec<String>,
    der: &[u8],
    inputs: &Inputs<'_>,
    headers: &[(String, String)],
    rcpts: &[String],
) -> Option<Outcome> {
    let mut keys: Vec<Arc<crate::keystore::SigningKey>> = Vec::new();
    for r in rcpts {
        if let Some(k) = rt.keys.find(r) {
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
            rt.keys
                .find(r)
                .is_some_and(|k| decrypt::is_addressed(der, &k.cert))
        });
    if !every_recipient {
        crate::metrics::decrypt("not_for_us");
        let any = keys.iter().any(|k| decrypt::is_addressed(der, &k.cert));
        notes.push(if any {
            "not decrypted: not every recipient holds a key it is encrypted to".into()
        } else {
            "encrypted to keys we do not hold".into()
        });
        return None;
    }
    let mut failed = |why: &str| {
        crate::metrics::decrypt("failed");
        notes.push(format!("{DECRYPTION_FAILED}: {why}"));
        if rt.config.actions.decrypt_failed != FailAction::Accept {
            let mut o = Outcome::failure(rt.config.actions.decrypt_failed, DECRYPTION_FAILED);
            o.reason = Some(notes.join(", "));
            return Some(o);
        }
        ops.push(decrypted_header(rt, "failed"));
        None
    };
    let (plaintext, key, kind) =
        match crate::metrics::timed(Operation::Decrypt, || decrypt::decrypt(der, &keys)) {
            Decryption::NotForUs => {
                crate::metrics::decrypt("not_for_us");
                notes.push("encrypted to keys we do not hold".into());
                return None;
            }
            Decryption::Failed(why) => return failed(&why),
            Decryption::Decrypted {
                plaintext,
                key,
                kind,
            } => (plaintext, key, kind),
        };
    // A first line with a colon is a header, valid or not (then refused):
    // header text must never slip into the body, nor the other way round.
    let first = plaintext.split(|&c| c == b'\n').next().unwrap_or(&[]);
    let (h, b) = if memchr::memchr(b':', first).is_some() {
        mime::split_entity(&plaintext)
    } else {
        mime::entity_parts(&plaintext)
    };
    // Copied into the outer header: each field one field, whatever the bytes.
    let mut new_fields = match plaintext_content_fields(h) {
        Ok(f) => f,
        Err(why) => return failed(why),
    };
    let fields = mime::parse_fields(h);
    let inner_ct = mime::field_value(&fields, "Content-Type")
        .and_then(|v| ContentType::parse(&v))
        .unwrap_or(ContentType {
            mime_type: "text/plain".into(),
            params: vec![],
        });
    let inner_cte = mime::field_value(&fields, "Content-Transfer-Encoding");
    let mut body = Vec::with_capacity(b.len() + b.len() / 16);
    mime::push_crlf(&mut body, b);
    let verdict = verify_entity(rt, inputs, &inner_ct, inner_cte.as_deref(), &body);

    // The decrypted header becomes the message's: one reading only (§3).
    let values = |name: &str| -> Vec<String> {
        new_fields
            .iter()
            .filter(|(n, _)| is_named(n, name))
            .map(|(_, v)| mime::unfold(v))
            .collect()
    };
    if let Some(why) = verify::header_problem(
        &values("Content-Type"),
        &values("Content-Transfer-Encoding"),
    ) {
        return failed(why);
    }
    // CBC authenticates nothing (EFAIL): release only what GCM or a valid
    // signature over all of it vouches for, unless the admin opts in.
    let gcm = kind == "authEnveloped-data";
    let signed_all = verdict
        .as_ref()
        .is_some_and(|v| v.result == SmimeResult::Pass)
        && signature_covers_all(&inner_ct, &body);
    if !gcm && signed_all && !rt.config.release_unauthenticated {
        // The signature covers the body: of the header, only what says how
        // to read it goes out (no unsigned Content-Description, -Base...).
        new_fields.retain(|(n, _)| {
            n.eq_ignore_ascii_case("Content-Type")
                || n.eq_ignore_ascii_case("Content-Transfer-Encoding")
        });
    }
    if !gcm && !signed_all && !rt.config.release_unauthenticated {
        crate::metrics::decrypt("withheld");
        ops.push(decrypted_header(
            rt,
            "no (unauthenticated CBC plaintext withheld, EFAIL)",
        ));
        notes.push(format!(
            "decrypted with {key}, withheld: CBC plaintext no signature covers"
        ));
        return None;
    }
    if new_fields.is_empty() {
        new_fields.push(("Content-Type".into(), "text/plain".into()));
    }
    crate::metrics::decrypt("decrypted");
    let mut ops = std::mem::take(ops);
    let mut notes = std::mem::take(notes);
    ops.extend(crate::outcome::replace_content_fields(headers, &new_fields));
    ops.push(HeaderOp::Insert {
        index: 0,
        name: DECRYPTED.into(),
        value: format!("yes; by={}; key={key}; type={kind}", rt.config.authserv_id),
    });
    // RFC 9788: the payload's protected header section (a signed payload's,
    // else the plaintext's own), held against the outer one and put back
    // where the sender's policy hid it.
    let mut verdict = verdict;
    let protected = match &verdict {
        Some(v) => v.protected.clone(),
        None => crate::protected::read(&inner_ct, &fields),
    };
    let mut restored_subject = None;
    if let Some(p) = &protected {
        match verdict.as_mut() {
            Some(v) => check_protection(v, headers, true),
            None => {
                let c = crate::protected::compare(p, headers, true);
                notes.extend(protection_notes(&c));
            }
        }
        let (restore, subject) = restore_ops(p, headers);
        if !restore.is_empty() {
            notes.push(format!(
                "restored protected {}",
                restore_names(&restore).join(", ")
            ));
        }
        ops.extend(restore);
        restored_subject = subject;
    }
    let Some(v) = verdict else {
        ops.extend(crate::visible::ops(
            &rt.config.display,
            headers,
            restored_subject.as_deref(),
            None,
            None,
            true,
        ));
        return Some(outcome(
            "decrypted",
            ops,
            Some(body),
            Some(format!("key={key}")),
            notes,
        ));
    };
    let mut r = report(rt, v, true, true);
    r.detail = r.detail.map(|d| format!("key={key} {d}"));
    r.subject = restored_subject;
    Some(finish(rt, ops, notes, r, "decrypted", Some(body), headers))
}

/// RFC 9788: a protected From that is another mailbox than the outer one
/// makes the result `policy`; other user-facing fields that differ are
/// named in the comment.
fn check_protection(v: &mut verify::Verdict, headers: &[(String, String)], encrypted: bool) {
    let Some(p) = &v.protected else {
        return;
    };
    let c = crate::protected::compare(p, headers, encrypted);
    if c.from_differs && v.result == SmimeResult::Pass {
        v.result = SmimeResult::Policy;
        v.signer = None;
    }
    let why = protection_notes(&c);
    if !why.is_empty() {
        v.reason = Some(match v.reason.take() {
            Some(r) => format!("{r}; {}", why.join("; ")),
            None => why.join("; "),
        });
    }
}

fn protection_notes(c: &crate::protected::Comparison) -> Vec<String> {
    let mut why = Vec::new();
    if c.from_differs {
        why.push("protected From differs from the message From".to_string());
    }
    match c.differing.as_slice() {
        [] => {}
        [one] => why.push(format!("protected {one} differs")),
        many => why.push(format!("protected {} differ", many.join(", "))),
    }
    why
}

/// The outer fields set back from the protected ones (each one safe field,
/// or left out), and the Subject so restored.
fn restore_ops(
    p: &crate::protected::Protected,
    headers: &[(String, String)],
) -> (Vec<HeaderOp>, Option<String>) {
    let mut ops = Vec::new();
    let mut subject = None;
    for (name, value) in crate::protected::to_restore(p, headers) {
        let v = crate::protected::field_value(&value, crate::protected::Fold::Milter);
        if !mime::header_value_is_safe(&v) {
            continue;
        }
        let n = values_named(headers, &name).count();
        if n == 0 {
            ops.push(HeaderOp::Add {
                name: name.clone(),
                value: v.clone(),
            });
        } else {
            ops.push(HeaderOp::Change {
                name: name.clone(),
                index: 1,
                value: Some(v.clone()),
            });
            for index in (2..=n).rev() {
                ops.push(HeaderOp::Change {
                    name: name.clone(),
                    index,
                    value: None,
                });
            }
        }
        if name == "Subject" {
            subject = Some(v);
        }
    }
    (ops, subject)
}

fn restore_names(ops: &[HeaderOp]) -> Vec<&str> {
    let mut names: Vec<&str> = ops
        .iter()
        .filter_map(|o| match o {
            HeaderOp::Add { name, .. }
            | HeaderOp::Change {
                name,
                value: Some(_),
                ..
            } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    names.dedup();
    names
}

/// The Content-* fields of a decrypted entity's header, to copy into the
/// outer header: strict syntax (every line a `Name: value` field or its
/// continuation), no control character but tab, the sender's folding kept
/// (blank continuation lines dropped), no line over 998 octets.
fn plaintext_content_fields(block: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    let text = std::str::from_utf8(block).map_err(|_| "8-bit header in the plaintext")?;
    // Readers that split at CRLF only and those that split at LF too must
    // see the same fields.
    let bare_lf = text
        .bytes()
        .enumerate()
        .any(|(i, c)| c == b'\n' && (i == 0 || text.as_bytes()[i - 1] != b'\r'));
    if bare_lf && text.contains("\r\n") {
        return Err("mixed line ends in the plaintext header");
    }
    for line in text.split_terminator('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            let Some((_, v)) = current.as_mut() else {
                return Err("header of the plaintext starts with a continuation");
            };
            if !line.trim().is_empty() {
                v.push('\n');
                v.push_str(line);
            }
            continue;
        }
        out.extend(current.take());
        let Some((name, value)) = line.split_once(':') else {
            return Err("header line of the plaintext is not a field");
        };
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_graphic()) {
            return Err("invalid field name in the plaintext");
        }
        current = Some((
            name.to_string(),
            value.trim_start_matches([' ', '\t']).to_string(),
        ));
    }
    out.extend(current);
    out.retain(|(n, _)| mime::is_content_field(n));
    for (_, v) in &mut out {
        *v = v.trim_end_matches([' ', '\t']).to_string();
        if !mime::header_value_is_safe(v) {
            return Err("unsafe header field in the plaintext");
        }
    }
    Ok(out)
}

/// Whether a signed plaintext entity is all signed: nothing but white
/// space and a client's usual notice around a multipart/signed, where CBC
/// gadgets could sit (a changed block never reads as an exact notice).
/// An opaque signature is all of its entity: bytes after it do not parse.
fn signature_covers_all(ct: &ContentType, body: &[u8]) -> bool {
    match verify::signed_form(ct) {
        Some(verify::SignedForm::Clear) => ct
            .param("boundary")
            .and_then(|b| mime::split_multipart(body, b).ok())
            .is_some_and(|mp| {
                mp.closed && verify::outside_text(mp.preamble, mp.epilogue) == Ok(false)
            }),
        Some(verify::SignedForm::Opaque) => true,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forged_fields_are_deleted_and_hidden_ones_flattened() {
        let h = fields(&[
            ("Authentication-Results", "other.example; spf=pass"),
            (
                "Subject",
                "hi\rAuthentication-Results: mx.example; smime=pass",
            ),
            ("Authentication-Results ", "mx.example.; smime=pass"),
            ("Authentication-Results", "(x) MX.example; smime=pass"),
        ]);
        let hidden = mime::hidden_fields(&h);
        let ops = forged_header_ops(&h, &hidden, AR, |v| {
            auth_results::claims_our_id(v, "mx.example")
        });
        assert_eq!(
            ops,
            vec![
                HeaderOp::Change {
                    name: "Subject".into(),
                    index: 1,
                    value: Some("hi Authentication-Results: mx.example; smime=pass".into()),
                },
                HeaderOp::Change {
                    name: "Authentication-Results".into(),
                    index: 3,
                    value: None,
                },
                HeaderOp::Change {
                    name: "Authentication-Results".into(),
                    index: 2,
                    value: None,
                },
            ]
        );
        let mut applied = h.clone();
        crate::outcome::apply_header_ops(&mut applied, &ops);
        assert_eq!(
            applied,
            fields(&[
                ("Authentication-Results", "other.example; spf=pass"),
                (
                    "Subject",
                    "hi Authentication-Results: mx.example; smime=pass"
                ),
            ])
        );
    }

    #[test]
    fn thousands_of_forged_fields_are_numbered_as_the_mta_numbers_them() {
        let mut h = fields(&[("Subject", "x")]);
        for i in 0..10_000 {
            let name = if i % 2 == 0 {
                "Authentication-Results"
            } else {
                "authentication-results "
            };
            h.push((name.into(), "mx.example; smime=pass".into()));
        }
        let ops = forged_header_ops(&h, &[], AR, |v| {
            auth_results::claims_our_id(v, "mx.example")
        });
        assert_eq!(ops.len(), 10_000);
        // Last first, each by its index among all fields of that name.
        for (k, op) in ops.iter().enumerate() {
            let HeaderOp::Change {
                index, value: None, ..
            } = op
            else {
                panic!("{op:?}");
            };
            assert_eq!(*index, 10_000 - k);
        }
    }

    #[test]
    fn the_from_a_reader_sees() {
        let view = |h: &[(&str, &str)]| {
            let h = fields(h);
            let hidden = mime::hidden_fields(&h);
            let mut id = None;
            match from_view(&h, &hidden, &mut id) {
                FromView::One(a) => a.to_string(),
                FromView::Unusable { why, .. } => why.to_string(),
            }
        };
        assert_eq!(
            view(&[("From", "Alice <alice@example.com>")]),
            "alice@example.com"
        );
        assert!(
            view(&[("From", "a@example.com"), ("From", "b@example.com")]).starts_with("ambiguous")
        );
        assert!(view(&[
            ("From", "a@example.com"),
            ("Subject", "x\rFrom: ceo@bank.example")
        ])
        .starts_with("ambiguous"));
        assert!(
            view(&[("From", "\"ceo@bank.example\" <evil@attacker.example>")])
                .starts_with("From shows another address")
        );
        assert!(view(&[]).starts_with("ambiguous"));
    }
}
