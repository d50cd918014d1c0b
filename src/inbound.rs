//! Inbound mail: remove Authentication-Results headers that claim our
//! authserv-id, verify the S/MIME signature and report it in our own header.
//! The body is never changed.

use crate::address;
use crate::auth_results;
use crate::config::{Config, Verification};
use crate::mime::{self, ContentType};
use crate::outcome::{Changes, HeaderOp, Outcome, Verdict};
use crate::verify::{self, SmimeResult};

const AR: &str = "Authentication-Results";

/// Work left for end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// 1-based indices, among the Authentication-Results fields, of those
    /// that claim our authserv-id.
    pub forged: Vec<usize>,
    /// Whether the message looks signed (the body is needed).
    pub signed: bool,
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

/// What to do once the body has arrived.
#[derive(Debug)]
pub enum Plan {
    Verify(Pending),
    /// Decided already; the rest of the message is not needed.
    Done(Outcome),
}

/// Decides at end of headers.
pub fn plan(cfg: &Config, headers: &[(String, String)]) -> Plan {
    if cfg.verify.is_none() {
        return Plan::Done(Outcome::unchanged("inbound, verification off"));
    }
    let forged: Vec<usize> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(AR))
        .enumerate()
        .filter(|(_, (_, v))| auth_results::claims_our_id(&mime::unfold(v), &cfg.authserv_id))
        .map(|(i, _)| i + 1)
        .collect();
    let signed = content_type(headers).is_some_and(|ct| verify::signed_form(&ct).is_some());
    if !signed && forged.is_empty() {
        return Plan::Done(Outcome::unchanged("not signed"));
    }
    Plan::Verify(Pending { forged, signed })
}

/// At end of message: the verdict, our header, and the forged ones removed.
/// `body` is `None` when the message was too large to keep.
pub fn verify_message(
    cfg: &Config,
    p: &Pending,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    now: Option<i64>,
) -> Outcome {
    let ver: &Verification = match &cfg.verify {
        Some(v) => v,
        None => return Outcome::unchanged("inbound, verification off"),
    };
    let mut ops: Vec<HeaderOp> = p
        .forged
        .iter()
        .rev()
        .map(|&index| HeaderOp::Change {
            name: AR.into(),
            index,
            value: None,
        })
        .collect();
    let removed = if p.forged.is_empty() {
        None
    } else {
        Some(format!("removed {} forged {AR}", p.forged.len()))
    };

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
    let cte = first(headers, "Content-Transfer-Encoding").map(mime::unfold);
    let verdict = match body {
        Some(body) => content_type(headers)
            .and_then(|ct| verify::verify_entity(&ctx, &ct, cte.as_deref(), body, "1", 0)),
        // Signed, but beyond max_message_size: say so rather than guess.
        None => p.signed.then(|| verify::Verdict {
            result: SmimeResult::Neutral,
            reason: Some(format!(
                "message larger than {} bytes not verified",
                cfg.max_message_size
            )),
            identifier: None,
            part: "1".into(),
            serial: None,
            issuer: None,
        }),
    };

    let Some(v) = verdict else {
        return Outcome {
            verdict: Verdict::Accept,
            changes: Changes {
                headers: ops,
                body: None,
            },
            action: "unchanged",
            reason: Some(
                ["not signed".to_string()]
                    .into_iter()
                    .chain(removed)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            detail: None,
        };
    };
    let mut detail = format!("smime={}", v.result);
    if let Some(id) = &v.identifier {
        detail.push_str(&format!(" signer={id}"));
    }
    let reason = v
        .reason
        .iter()
        .cloned()
        .chain(removed)
        .collect::<Vec<_>>()
        .join(", ");
    let reason = (!reason.is_empty()).then_some(reason);
    if matches!(v.result, SmimeResult::Fail | SmimeResult::Permerror)
        && cfg.actions.bad_signature != crate::config::FailAction::Accept
    {
        let mut o = Outcome::failure(
            cfg.actions.bad_signature,
            reason.unwrap_or_else(|| "bad signature".into()),
        );
        o.detail = Some(detail);
        return o;
    }
    ops.push(HeaderOp::Insert {
        index: 0,
        name: AR.into(),
        value: auth_results::header_value(&cfg.authserv_id, &v),
    });
    Outcome {
        verdict: Verdict::Accept,
        changes: Changes {
            headers: ops,
            body: None,
        },
        action: "verified",
        reason,
        detail: Some(detail),
    }
}
