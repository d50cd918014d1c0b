//! `smime-milter test`: runs one message through the same `Session` code the
//! milter uses and prints what the MTA would deliver (like opendkim-testmsg).

use crate::mime;
use crate::outcome::{apply_header_ops, Verdict};
use crate::policy::Direction;
use crate::runtime::Runtime;
use crate::session::{self, Session, Step};
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

pub const EXIT_ACCEPT: i32 = 0;
pub const EXIT_REJECT: i32 = 69; // EX_UNAVAILABLE
pub const EXIT_TEMPFAIL: i32 = 75; // EX_TEMPFAIL

#[derive(Debug, Default)]
pub struct TestArgs {
    pub direction: Option<Direction>,
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub client_ip: Option<IpAddr>,
    pub auth_user: Option<String>,
}

/// Processes `input` (a message with LF or CRLF line ends) and writes the
/// message as delivered to `out`, the summary to `err`. Returns the exit code.
/// One message through the session code: what the milter decided, and
/// the message as the MTA handed it over.
pub struct Processed {
    pub outcome: crate::outcome::Outcome,
    /// The summary log line.
    pub summary: Option<String>,
    /// Refused recipients, as the MTA would be told.
    pub refused: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub smtp_body: Vec<u8>,
    crlf_input: bool,
}

/// Runs `input` through the same code the milter runs.
pub fn process(rt: Arc<Runtime>, args: &TestArgs, input: &[u8]) -> Processed {
    let crlf_input = memchr::memmem::find(input, b"\r\n").is_some();
    let (block, body) = mime::split_entity(input);
    // Each value as the MTA would pass it: after the colon's blanks,
    // without the line end; its bytes as they are (not all are UTF-8).
    let raw_values: Vec<(&str, &[u8])> = mime::parse_fields(block)
        .iter()
        .map(|f| {
            let blanks = f.value.iter().take_while(|&&b| b == b' ' || b == b'\t');
            let v = &f.value[blanks.count()..];
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            (f.name, v.strip_suffix(b"\r").unwrap_or(v))
        })
        .collect();
    let headers: Vec<(String, String)> = raw_values
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let mut smtp_body = Vec::with_capacity(body.len() + body.len() / 20);
    mime::push_crlf(&mut smtp_body, body);

    let client_ip = args
        .client_ip
        .or_else(|| Some(IpAddr::from([127, 0, 0, 1])));
    let mut s = Session::new(client_ip);
    s.direction_override = args.direction;
    s.mail(
        rt,
        args.sender.as_deref().unwrap_or(""),
        args.auth_user.as_deref(),
    );
    if let Some(m) = s.message.as_mut() {
        m.queue_id = Some("TEST".into());
    }
    let mut refused = Vec::new();
    let mut outcome = None;
    for r in &args.recipients {
        match s.rcpt(r) {
            Step::Done(o) => {
                outcome = Some(o);
                break;
            }
            Step::RejectRecipient(why)
            | Step::TempfailRecipient(why)
            | Step::TooManyRecipients(why) => refused.push(why),
            Step::Continue => {}
        }
    }
    if outcome.is_none() {
        for (n, v) in &raw_values {
            if let Step::Done(o) = s.header(n, v) {
                outcome = Some(o);
                break;
            }
        }
    }
    if outcome.is_none() {
        if let Step::Done(o) = s.end_of_headers() {
            outcome = Some(o);
        }
    }
    if outcome.is_none() {
        for chunk in smtp_body.chunks(65535) {
            if let Step::Done(o) = s.body(chunk) {
                outcome = Some(o);
                break;
            }
        }
    }
    let outcome = match outcome {
        Some(o) => o,
        None => s.end_of_message(),
    };
    let summary = s
        .message
        .as_ref()
        .map(|m| session::summary_line(m, &outcome));
    if let Some(m) = &s.message {
        session::finished(m, &outcome);
    }
    Processed {
        outcome,
        summary,
        refused,
        headers,
        smtp_body,
        crlf_input,
    }
}

pub fn run(
    rt: Arc<Runtime>,
    args: &TestArgs,
    input: &[u8],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let Processed {
        outcome,
        summary,
        refused,
        headers,
        smtp_body,
        crlf_input,
    } = process(rt.clone(), args, input);
    // A test's writes are made before it reports (the process ends next).
    if let Some(store) = &rt.harvest_ldap {
        store.finish();
    }
    for why in refused {
        writeln!(err, "TEST: recipient refused: {why}")?;
    }
    if let Some(line) = summary {
        writeln!(err, "{line}")?;
    }

    let code = match outcome.verdict {
        Verdict::Accept => EXIT_ACCEPT,
        Verdict::Tempfail(_) => EXIT_TEMPFAIL,
        Verdict::Reject(_) => EXIT_REJECT,
    };
    if code != EXIT_ACCEPT {
        return Ok(code);
    }
    let mut fields = headers;
    apply_header_ops(&mut fields, &outcome.changes.headers);
    let mut head = Vec::with_capacity(4096);
    for (n, v) in &fields {
        head.extend_from_slice(n.as_bytes());
        head.extend_from_slice(b": ");
        mime::push_crlf(&mut head, v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    // Written in place, not assembled: a large message is not copied again.
    let body = outcome.changes.body.as_deref().unwrap_or(&smtp_body);
    let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
    for part in [&head[..], body] {
        if crlf_input {
            w.write_all(part)?;
        } else {
            write_lf(&mut w, part)?;
        }
    }
    w.flush()?;
    Ok(code)
}

/// Writes `input` with CRLF line ends turned into LF.
fn write_lf(out: &mut dyn Write, input: &[u8]) -> std::io::Result<()> {
    let mut start = 0;
    for cr in memchr::memmem::find_iter(input, b"\r\n") {
        out.write_all(&input[start..cr])?;
        start = cr + 1;
    }
    out.write_all(&input[start..])
}
