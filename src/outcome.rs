//! What the milter decided about one message: the verdict for the MTA and the
//! changes to make, in a form both the milter and the offline test mode apply.

use crate::config::FailAction;
use crate::pki::SignerCert;
use crate::verify::SmimeResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver (with the changes, if any).
    Accept,
    /// 451 4.7.0: keep the message queued.
    Tempfail(String),
    /// 550 5.7.0: refuse it.
    Reject(String),
}

impl Verdict {
    /// The verdict a configured failure action gives.
    pub fn for_action(action: FailAction, reason: &str) -> Verdict {
        match action {
            FailAction::Accept => Verdict::Accept,
            FailAction::Tempfail => Verdict::Tempfail(reason.to_string()),
            FailAction::Reject => Verdict::Reject(reason.to_string()),
        }
    }

    /// The word in the summary log line.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Reject(_) => "reject",
        }
    }
}

/// A header change with the milter protocol's semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// `smfi_chgheader`: the `index`-th (from 1) field of that name; `None`
    /// deletes it.
    Change {
        name: String,
        index: usize,
        value: Option<String>,
    },
    /// `smfi_addheader`: append a field.
    Add { name: String, value: String },
    /// `smfi_insheader`: insert a field before the `index`-th (0 = on top).
    Insert {
        index: usize,
        name: String,
        value: String,
    },
}

impl HeaderOp {
    /// The field's name when the value is not one safe field to every
    /// reader (`mime::header_value_is_safe`): the last check before a
    /// header leaves.
    pub fn unsafe_name(&self) -> Option<&str> {
        match self {
            // A sender's field, flattened: its lines as long as the sender
            // made them.
            HeaderOp::Change {
                name,
                value: Some(v),
                ..
            } => (!crate::mime::header_value_is_one_field(v)).then_some(name.as_str()),
            HeaderOp::Add { name, value } | HeaderOp::Insert { name, value, .. } => {
                (!crate::mime::header_value_is_safe(value)).then_some(name.as_str())
            }
            HeaderOp::Change { value: None, .. } => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Applied in order; deletions come last-index first so that indices stay
    /// valid whatever the MTA's numbering after a delete.
    pub headers: Vec<HeaderOp>,
    /// The whole new body, CRLF line ends.
    pub body: Option<Vec<u8>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.body.is_none()
    }
}

/// The result for one message, with what the summary line reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    pub changes: Changes,
    /// What was done: `signed`, `unchanged`, ... (the summary's `action=`).
    pub action: &'static str,
    /// Why, when it was not the ordinary path.
    pub reason: Option<String>,
    /// What the summary line adds: the key used, the smime result...
    pub detail: Option<String>,
    /// The signature's result, when one was checked (for metrics).
    pub smime: Option<SmimeResult>,
    /// A signer to harvest into the directory once the MTA has its answer,
    /// under the From address it was verified for.
    pub harvest: Option<Box<(SignerCert, String)>>,
}

impl Outcome {
    pub fn unchanged(reason: impl Into<String>) -> Outcome {
        Outcome {
            verdict: Verdict::Accept,
            changes: Changes::default(),
            action: "unchanged",
            reason: Some(reason.into()),
            detail: None,
            smime: None,
            harvest: None,
        }
    }

    /// A failure handled by its configured action: never a partial rewrite.
    pub fn failure(action: FailAction, reason: impl Into<String>) -> Outcome {
        let reason = reason.into();
        let verdict = Verdict::for_action(action, &reason);
        let word = match verdict {
            Verdict::Accept => "unchanged",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Reject(_) => "reject",
        };
        Outcome {
            verdict,
            changes: Changes::default(),
            action: word,
            reason: Some(reason),
            detail: None,
            smime: None,
            harvest: None,
        }
    }
}

/// Deletes every Content-* field of the message (last first within a name)
/// and adds the new ones: the body becomes another MIME entity.
pub fn replace_content_fields(
    headers: &[(String, String)],
    new: &[(String, String)],
) -> Vec<HeaderOp> {
    let mut ops = Vec::new();
    for (name, count) in content_field_counts(headers) {
        for i in (1..=count).rev() {
            ops.push(HeaderOp::Change {
                name: name.clone(),
                index: i,
                value: None,
            });
        }
    }
    for (n, v) in new {
        ops.push(HeaderOp::Add {
            name: n.clone(),
            value: v.clone(),
        });
    }
    ops
}

/// The Content-* fields, each name once (as first written, in the order
/// first seen) with how often it occurs: what a rewrite must delete.
/// Counted in one pass: a message may carry very many.
pub fn content_field_counts(headers: &[(String, String)]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (n, _) in headers
        .iter()
        .filter(|(n, _)| crate::mime::is_content_field(n))
    {
        match index.get(&n.to_ascii_lowercase()) {
            Some(&i) => counts[i].1 += 1,
            None => {
                index.insert(n.to_ascii_lowercase(), counts.len());
                counts.push((n.clone(), 1));
            }
        }
    }
    counts
}

/// Each field's index among the fields of its name (from 1), as a header
/// change names it: the name as the MTA matches it (Postfix: without the
/// white space of `Name :`), in any case. One pass: a sender may send
/// thousands of fields.
pub fn field_indices(headers: &[(String, String)]) -> Vec<usize> {
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    headers
        .iter()
        .map(|(n, _)| {
            let k = seen
                .entry(n.trim_end_matches([' ', '\t']).to_ascii_lowercase())
                .or_default();
            *k += 1;
            *k
        })
        .collect()
}

/// Applies header operations to a list of (name, value) fields the way an MTA
/// does; used by the test mode to show what would be delivered.
pub fn apply_header_ops(fields: &mut Vec<(String, String)>, ops: &[HeaderOp]) {
    for op in ops {
        match op {
            HeaderOp::Change { name, index, value } => {
                let pos = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| crate::mime::is_named(n, name))
                    .nth(index.saturating_sub(1))
                    .map(|(i, _)| i);
                match (pos, value) {
                    (Some(i), Some(v)) => fields[i].1 = v.clone(),
                    (Some(i), None) => {
                        fields.remove(i);
                    }
                    // Like sendmail and Postfix: changing a missing field adds it.
                    (None, Some(v)) => fields.push((name.clone(), v.clone())),
                    (None, None) => {}
                }
            }
            HeaderOp::Add { name, value } => fields.push((name.clone(), value.clone())),
            HeaderOp::Insert { index, name, value } => {
                fields.insert((*index).min(fields.len()), (name.clone(), value.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ops_follow_milter_semantics() {
        let mut f = vec![
            ("From".to_string(), "a@x".to_string()),
            ("Content-Type".to_string(), "text/plain".to_string()),
            ("content-type".to_string(), "dup".to_string()),
        ];
        apply_header_ops(
            &mut f,
            &[
                HeaderOp::Change {
                    name: "Content-Type".into(),
                    index: 2,
                    value: None,
                },
                HeaderOp::Change {
                    name: "CONTENT-TYPE".into(),
                    index: 1,
                    value: Some("multipart/signed".into()),
                },
                HeaderOp::Add {
                    name: "MIME-Version".into(),
                    value: "1.0".into(),
                },
            ],
        );
        assert_eq!(
            f,
            vec![
                ("From".to_string(), "a@x".to_string()),
                ("Content-Type".to_string(), "multipart/signed".to_string()),
                ("MIME-Version".to_string(), "1.0".to_string()),
            ]
        );
    }

    #[test]
    fn failure_actions_map_to_verdicts() {
        assert_eq!(
            Outcome::failure(FailAction::Accept, "x").action,
            "unchanged"
        );
        assert_eq!(
            Outcome::failure(FailAction::Tempfail, "x").verdict,
            Verdict::Tempfail("x".into())
        );
        assert_eq!(Outcome::failure(FailAction::Reject, "x").action, "reject");
    }
}
