//! One MTA connection, kept thin: each packet is decoded, handed to one
//! `Session` method, and its answer written back. No panic leaves a step:
//! it is caught, logged and becomes the internal-error action.

use crate::live::Live;
use crate::outcome::{HeaderOp, Outcome, Verdict};
use crate::progress::Busy;
use crate::protocol::{self, action, stage, step, Command, ProtocolError, Response};
use crate::session::{self, Session, Step};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The steps we need no reply for, so that the MTA need not wait after the
/// connection, each header line and body chunk (a round trip each), and the
/// ones we do not use at all. RCPT, end of headers and end of message keep
/// their replies: a recipient or a message can be refused there.
const WANTED_STEPS: u64 = step::NOHELO
    | step::NOUNKNOWN
    | step::NODATA
    | step::NR_CONN
    | step::NR_HDR
    | step::NR_MAIL
    | step::NR_BODY;

/// The changes we make: headers (Authentication-Results, Content-Type...)
/// and the body.
const NEEDED_ACTIONS: u32 = action::ADDHDRS | action::CHGHDRS | action::CHGBODY;

/// Per stage, the macros smime-milter reads: the queue id (logs) and the
/// SMTP AUTH login (who may sign as whom). An empty list asks for none.
const MACROS: &[(u32, &str)] = &[
    // The MTA's name: Postfix takes progress replies at every step.
    (stage::CONNECT, "v"),
    (stage::HELO, ""),
    (stage::ENVFROM, "i {auth_authen}"),
    // Postfix assigns the queue id after the first valid recipient
    // (smtpd_delay_open_until_valid_rcpt), so it is asked for again.
    (stage::ENVRCPT, "i"),
    (stage::DATA, ""),
    (stage::EOH, "i"),
    (stage::EOM, "i"),
];

const TEMPFAIL_REPLY: &str = "451 4.7.0 S/MIME processing failed, please try again later";
const REJECT_REPLY: &str = "550 5.7.0 message refused by S/MIME policy";

/// Macro values the MTA sent, per stage.
#[derive(Default)]
struct Macros {
    by_stage: [Vec<(String, String)>; 7],
}

impl Macros {
    fn stage_of(cmd: u8) -> Option<u32> {
        Some(match cmd {
            b'C' => stage::CONNECT,
            b'H' => stage::HELO,
            b'M' => stage::ENVFROM,
            b'R' => stage::ENVRCPT,
            b'T' => stage::DATA,
            b'E' => stage::EOM,
            b'N' => stage::EOH,
            _ => return None,
        })
    }

    fn set(&mut self, for_cmd: u8, pairs: &[(&[u8], &[u8])]) {
        let Some(i) = Self::stage_of(for_cmd) else {
            return;
        };
        // A new message: what the previous one's later stages said is stale.
        if i == stage::ENVFROM {
            for later in [stage::ENVRCPT, stage::DATA, stage::EOH, stage::EOM] {
                self.by_stage[later as usize].clear();
            }
        }
        self.by_stage[i as usize] = pairs
            .iter()
            .map(|(n, v)| {
                let n = String::from_utf8_lossy(n);
                let n = n.trim_start_matches('{').trim_end_matches('}').to_string();
                (n, String::from_utf8_lossy(v).into_owned())
            })
            .collect();
    }

    /// The latest stage's value first; `i` and `{i}` are the same macro.
    fn get(&self, name: &str) -> Option<&str> {
        let name = name.trim_start_matches('{').trim_end_matches('}');
        [
            stage::EOM,
            stage::EOH,
            stage::DATA,
            stage::ENVRCPT,
            stage::ENVFROM,
            stage::HELO,
            stage::CONNECT,
        ]
        .iter()
        .flat_map(|&i| self.by_stage[i as usize].iter())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
    }

    fn queue_id(&self) -> Option<String> {
        self.get("i").filter(|s| !s.is_empty()).map(str::to_string)
    }
}

/// What the loop does after a packet.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    Close,
}

struct Connection<'a, W: Write> {
    live: &'a Live,
    /// For progress replies during long steps (None in unit tests).
    busy: Option<Arc<Busy>>,
    out: W,
    session: Session,
    macros: Macros,
}

/// Serves one connection until the MTA quits or closes it. A protocol error
/// closes it: the MTA then applies its own default action
/// (`milter_default_action = tempfail` keeps the message queued).
pub fn serve(
    input: impl Read,
    output: impl Write,
    buffers: &mut protocol::Buffers,
    live: &Live,
    busy: Option<Arc<Busy>>,
) -> Result<(), ProtocolError> {
    let (mut reader, out) = buffers.split(input, output);
    let mut conn = Connection {
        live,
        busy,
        out,
        session: Session::new(None),
        macros: Macros::default(),
    };
    loop {
        // Replies wait in the buffer while more packets are in: the MTA sent
        // those without waiting for them.
        if !reader.has_complete_packet() {
            conn.out.flush()?;
        }
        let command = match reader.next_packet() {
            Ok(None) => break,
            Ok(Some((cmd, data))) => protocol::parse(cmd, data),
            Err(e) => Err(e),
        };
        let command = match command {
            Ok(c) => c,
            // A broken connection is the MTA's business; a broken packet is
            // worth a warning.
            Err(e @ ProtocolError::Io(_)) => return Err(e),
            Err(e) => {
                conn.log_protocol_error(&e);
                return Err(e);
            }
        };
        if conn.handle(command)? == Flow::Close {
            break;
        }
    }
    conn.out.flush()?;
    Ok(())
}

impl<W: Write> Connection<'_, W> {
    /// Postfix names itself in the `v` macro (Sendmail gives its version).
    fn mta_is_postfix(&self) -> bool {
        self.macros
            .get("v")
            .is_some_and(|v| v.starts_with("Postfix"))
    }

    fn qid(&self) -> String {
        self.macros
            .queue_id()
            .or_else(|| self.session.message.as_ref()?.queue_id.clone())
            .unwrap_or_else(|| "NOQUEUE".into())
    }

    fn log_protocol_error(&self, e: &ProtocolError) {
        log::warn!(
            "{}: closing the MTA connection: {e}; the MTA applies its default action",
            self.qid()
        );
    }

    fn reply(&mut self, r: Response) -> std::io::Result<()> {
        protocol::write_response(&mut self.out, &r)
    }

    /// Replies `r` unless the MTA agreed not to wait for one at this step.
    fn reply_unless(&mut self, no_reply: u64, r: Response) -> std::io::Result<Flow> {
        if self.session.no_reply & no_reply == 0 {
            self.reply(r)?;
        }
        Ok(Flow::Go)
    }

    fn handle(&mut self, command: Command) -> std::io::Result<Flow> {
        match command {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => self.negotiate(version, actions, protocol),
            Command::Macros { for_cmd, pairs } => {
                self.macros.set(for_cmd, &pairs);
                Ok(Flow::Go)
            }
            Command::Connect { addr, .. } => {
                self.session.client_ip = addr;
                self.reply_unless(step::NR_CONN, Response::Continue)
            }
            Command::Helo => self.reply_unless(step::NR_HELO, Response::Continue),
            Command::Mail(args) => {
                if self.live.stopping() {
                    // Stopping: the MTA defers this message.
                    log::info!("stopping: closing an MTA connection at a new message");
                    return Ok(Flow::Close);
                }
                let sender = String::from_utf8_lossy(args.first().copied().unwrap_or_default());
                let login = self.macros.get("auth_authen").map(str::to_string);
                self.guarded("mail", step::NR_MAIL, |s| {
                    s.mail(self.live.runtime(), &sender, login.as_deref());
                    Step::Continue
                })
            }
            Command::Rcpt(args) => {
                let rcpt = String::from_utf8_lossy(args.first().copied().unwrap_or_default());
                self.guarded("rcpt", step::NR_RCPT, |s| s.rcpt(&rcpt))
            }
            Command::Data => self.reply_unless(step::NR_DATA, Response::Continue),
            Command::Header { name, value } => {
                // The value's bytes go on as they came (not all are UTF-8).
                let name = String::from_utf8_lossy(name);
                self.guarded("header", step::NR_HDR, |s| s.header(&name, value))
            }
            Command::EndOfHeaders => {
                let qid = self.macros.queue_id();
                self.guarded("eoh", step::NR_EOH, |s| {
                    if let Some(m) = s.message.as_mut() {
                        m.queue_id = qid;
                    }
                    s.end_of_headers()
                })
            }
            Command::Body(chunk) => self.guarded("body", step::NR_BODY, |s| s.body(chunk)),
            Command::EndOfMessage(chunk) => self.end_of_message(chunk),
            Command::Abort => {
                self.session.reset();
                Ok(Flow::Go)
            }
            Command::Quit => Ok(Flow::Close),
            Command::QuitNewConnection => {
                let no_reply = self.session.no_reply;
                self.session = Session::new(None);
                self.session.no_reply = no_reply;
                self.macros = Macros::default();
                Ok(Flow::Go)
            }
            Command::Unknown => self.reply_unless(step::NR_UNKN, Response::Continue),
        }
    }

    fn negotiate(&mut self, version: u32, actions: u32, protocol: u32) -> std::io::Result<Flow> {
        if version < 2 {
            log::error!("the MTA speaks milter protocol version {version}; 2 or later is needed");
            return Ok(Flow::Close);
        }
        if actions & NEEDED_ACTIONS != NEEDED_ACTIONS {
            log::error!("the MTA does not offer the header and body changes smime-milter needs");
            return Ok(Flow::Close);
        }
        let steps = u64::from(protocol) & WANTED_STEPS;
        // Only the macros we read: the MTA sends fewer packets per message.
        let symlist = actions & action::SETSYMLIST;
        self.reply(Response::OptNeg {
            version: version.min(protocol::VERSION),
            actions: NEEDED_ACTIONS | symlist,
            protocol: steps as u32,
            macros: if symlist != 0 { MACROS } else { &[] },
        })?;
        self.session = Session::new(None);
        self.session.no_reply = steps;
        Ok(Flow::Go)
    }

    /// Runs a step on the session; a panic is logged and becomes the
    /// internal-error action's outcome.
    fn call<T>(&mut self, stage: &str, f: impl FnOnce(&mut Session) -> T) -> Result<T, Outcome> {
        // Progress where the MTA takes it: Sendmail at end of message only.
        // What is buffered goes first: progress must not overtake it (and
        // none follows a write that failed).
        let progress = stage == "eom" || (matches!(stage, "eoh" | "rcpt") && self.mta_is_postfix());
        let busy = match &self.busy {
            Some(b) if progress && self.out.flush().is_ok() => Some(Arc::clone(b)),
            _ => None,
        };
        if let Some(b) = &busy {
            b.begin();
        }
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut self.session)));
        if let Some(b) = &busy {
            b.end();
        }
        match result {
            Ok(v) => Ok(v),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                log::error!(
                    "{}: internal error: panic in {stage} callback: {what}",
                    self.qid()
                );
                let mut action = self.live.runtime().config.actions.internal_error;
                if self.session.requires_encryption() {
                    action = action.stricter(crate::config::FailAction::Tempfail);
                }
                Err(Outcome::failure(
                    action,
                    format!("panic in {stage} callback"),
                ))
            }
        }
    }

    /// A step; in one the MTA expects no reply to (`no_reply`), a decision
    /// is kept for the next step that has one.
    fn guarded(
        &mut self,
        stage: &str,
        no_reply: u64,
        f: impl FnOnce(&mut Session) -> Step,
    ) -> std::io::Result<Flow> {
        let st = self.call(stage, f).unwrap_or_else(Step::Done);
        if self.session.no_reply & no_reply == 0 {
            return self.step(st);
        }
        if let Step::Done(o) = st {
            self.session.defer(o);
        }
        Ok(Flow::Go)
    }

    fn step(&mut self, st: Step) -> std::io::Result<Flow> {
        match st {
            Step::Continue => self.reply(Response::Continue)?,
            Step::Done(o) => self.finish(o, Ok(()))?,
            Step::RejectRecipient(why) => {
                log::warn!("{}: recipient refused: {why}", self.qid());
                self.reply(Response::ReplyCode(
                    "550 5.7.1 recipient has no S/MIME certificate; mail to it must be encrypted",
                ))?
            }
            Step::TempfailRecipient(why) => {
                log::warn!("{}: recipient deferred: {why}", self.qid());
                self.reply(Response::ReplyCode(
                    "451 4.7.1 cannot look up the recipient's S/MIME certificate, try again later",
                ))?
            }
            Step::TooManyRecipients(why) => {
                log::warn!("{}: recipient deferred: {why}", self.qid());
                self.reply(Response::ReplyCode("452 4.5.3 too many recipients"))?
            }
        }
        Ok(Flow::Go)
    }

    /// Answers the MTA, ends the message, then logs the summary: the line
    /// says what the MTA was sent, or that the answer did not reach it.
    /// `changes`: how writing the message's changes went (end of message).
    fn finish(&mut self, outcome: Outcome, changes: std::io::Result<()>) -> std::io::Result<()> {
        let sent = changes
            .and_then(|()| {
                self.reply(match outcome.verdict {
                    Verdict::Accept => Response::Accept,
                    Verdict::Tempfail(_) => Response::ReplyCode(TEMPFAIL_REPLY),
                    Verdict::Reject(_) => Response::ReplyCode(REJECT_REPLY),
                })
            })
            .and_then(|()| self.out.flush());
        let qid = self.macros.queue_id();
        if let Some(m) = self.session.message.as_mut() {
            if m.queue_id.is_none() {
                m.queue_id = qid;
            }
            let line = session::summary_line(m, &outcome);
            match (&sent, &outcome.verdict) {
                (Err(e), _) => log::warn!("{line} (not received by the MTA: {e})"),
                (Ok(()), Verdict::Accept) => log::info!("{line}"),
                (Ok(()), _) => log::warn!("{line}"),
            }
            // The reply is out: nothing here may cost the connection.
            if sent.is_ok()
                && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    session::finished(m, &outcome)
                }))
                .is_err()
            {
                log::error!(
                    "{}: internal error: panic after the reply (metrics, harvest)",
                    self.qid()
                );
            }
        }
        self.session.reset();
        sent
    }

    fn end_of_message(&mut self, last_chunk: &[u8]) -> std::io::Result<Flow> {
        if !last_chunk.is_empty() {
            // Sendmail may send the last body chunk with the end of message.
            match self.call("body", |s| s.body(last_chunk)) {
                Ok(Step::Done(o)) | Err(o) => self.session.defer(o),
                Ok(_) => {}
            }
        }
        let qid = self.macros.queue_id();
        let outcome = self
            .call("eom", |s| {
                if let Some(m) = s.message.as_mut() {
                    if m.queue_id.is_none() {
                        m.queue_id = qid;
                    }
                }
                s.end_of_message()
            })
            .unwrap_or_else(|o| o);
        // Changes only at end of message, and only to a message accepted.
        let changes = if outcome.verdict == Verdict::Accept {
            self.write_changes(&outcome)
        } else {
            Ok(())
        };
        self.finish(outcome, changes)?;
        Ok(Flow::Go)
    }

    /// The changes go out before the final reply; if the connection breaks
    /// before that reply, the MTA applies none of them (and its default
    /// action keeps the message queued), so no message is half rewritten.
    fn write_changes(&mut self, o: &Outcome) -> std::io::Result<()> {
        for op in &o.changes.headers {
            let r = match op {
                HeaderOp::Change { name, index, value } => Response::ChangeHeader {
                    index: *index as u32,
                    name,
                    value: value.as_deref().unwrap_or(""),
                },
                HeaderOp::Add { name, value } => Response::AddHeader { name, value },
                HeaderOp::Insert { index, name, value } => Response::InsertHeader {
                    index: *index as u32,
                    name,
                    value,
                },
            };
            self.reply(r)?;
        }
        if let Some(body) = &o.changes.body {
            // An empty body is a body too (a decrypted message may have
            // none): one empty packet, as libmilter sends.
            if body.is_empty() {
                self.reply(Response::ReplaceBody(&[]))?;
            }
            for chunk in body.chunks(protocol::BODY_CHUNK) {
                self.reply(Response::ReplaceBody(chunk))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_of_later_stages_win_and_a_new_message_clears_them() {
        let mut m = Macros::default();
        m.set(b'M', &[(b"i", b""), (b"{auth_authen}", b"alice")]);
        m.set(b'R', &[(b"i", b"Q1")]);
        assert_eq!(m.queue_id().as_deref(), Some("Q1"));
        assert_eq!(m.get("{auth_authen}"), Some("alice"));
        assert_eq!(m.get("{i}"), Some("Q1"));
        m.set(b'M', &[(b"i", b"")]);
        assert_eq!(m.queue_id(), None, "the last message's queue id is gone");
        assert_eq!(m.get("auth_authen"), None);
    }
}
