//! Per-connection and per-message state, free of protocol types: the milter
//! callbacks and the offline test mode drive the same methods.

use crate::certstore::Lookup;
use crate::config::EncryptMode;
use crate::inbound;
use crate::outbound::{self, Plan, Work};
use crate::outcome::Outcome;
use crate::policy::{self, Direction};
use crate::runtime::Runtime;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// One message in flight.
pub struct Message {
    rt: Arc<Runtime>,
    pub queue_id: Option<String>,
    pub auth_login: Option<String>,
    pub sender: String,
    /// Envelope recipients accepted so far (angle brackets removed).
    pub recipients: Vec<String>,
    pub headers: Vec<(String, String)>,
    /// Header values that were not UTF-8 (`headers` has them with U+FFFD),
    /// by index, as the MTA sent them.
    pub raw_values: Vec<(usize, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Header and body bytes seen, including what was not kept.
    pub size: u64,
    pub direction: Direction,
    pending: Option<Pending>,
    /// The body went over max_message_size and was dropped.
    oversized: bool,
    /// Decided while the MTA expected no reply (negotiated no-reply steps):
    /// given at end of message.
    deferred: Option<Outcome>,
    pub started: Instant,
    /// Bytes counted against `memory_limit` (see `BUFFERED`).
    reserved: usize,
}

impl Drop for Message {
    fn drop(&mut self) {
        release(&mut self.reserved);
    }
}

/// Memory counted for all messages in flight, for `memory_limit`.
static BUFFERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts `n` more bytes against the limit; false (nothing counted) when
/// they would go beyond it.
fn reserve(reserved: &mut usize, n: usize, limit: u64) -> bool {
    use std::sync::atomic::Ordering;
    let ok = BUFFERED
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
            let next = now.checked_add(n)?;
            (next as u64 <= limit).then_some(next)
        })
        .is_ok();
    if ok {
        *reserved += n;
    }
    ok
}

fn release(reserved: &mut usize) {
    BUFFERED.fetch_sub(
        std::mem::take(reserved),
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// Memory counted now for all messages in flight.
pub fn buffered() -> usize {
    BUFFERED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Work decided at end of headers, done at end of message.
enum Pending {
    Process(Work),
    Verify(inbound::Pending),
}

/// Messages between MAIL FROM and their end, over all connections: a stop
/// waits for them.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn in_flight() -> usize {
    IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst)
}

/// A client connection; holds at most one message at a time.
pub struct Session {
    pub client_ip: Option<IpAddr>,
    /// Protocol steps the MTA agreed not to wait for a reply to (SMFIP_NR_*).
    pub no_reply: u64,
    /// Forces the direction (test mode); otherwise decided per message.
    pub direction_override: Option<Direction>,
    pub message: Option<Message>,
}

/// What a callback tells the caller to do next.
#[derive(Debug)]
pub enum Step {
    /// Keep sending (the next stage's data).
    Continue,
    /// Refuse this recipient only (5xx); the message goes on for the others.
    RejectRecipient(String),
    /// Refuse this recipient for now (4xx): its certificate is unknown.
    TempfailRecipient(String),
    /// Refuse this recipient for now: one more than `max_recipients`
    /// (RFC 5321 §4.5.3.1.10: 452, the client sends it again later).
    TooManyRecipients(String),
    /// Decided: report this outcome; no further data is needed.
    Done(Outcome),
}

impl Session {
    pub fn new(client_ip: Option<IpAddr>) -> Session {
        Session {
            client_ip,
            no_reply: 0,
            direction_override: None,
            message: None,
        }
    }

    /// Keeps an outcome decided where the MTA expects no reply, for the end
    /// of the message.
    pub fn defer(&mut self, o: Outcome) {
        if let Some(m) = self.message.as_mut() {
            if m.deferred.is_none() {
                m.deferred = Some(o);
            }
            m.body = Vec::new();
            release(&mut m.reserved);
        }
    }

    /// MAIL FROM: a new message starts with the configuration in force now,
    /// kept for the whole message even if a reload happens meanwhile.
    pub fn mail(&mut self, rt: Arc<Runtime>, sender: &str, auth_login: Option<&str>) {
        let auth_login = auth_login.filter(|l| !l.is_empty()).map(str::to_string);
        let direction = self.direction_override.unwrap_or_else(|| {
            policy::direction(&rt.config, self.client_ip, auth_login.as_deref())
        });
        if self.message.is_none() {
            IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.message = Some(Message {
            rt,
            queue_id: None,
            auth_login,
            sender: sender.trim_matches(['<', '>']).to_string(),
            recipients: Vec::new(),
            headers: Vec::new(),
            raw_values: Vec::new(),
            body: Vec::new(),
            size: 0,
            direction,
            pending: None,
            oversized: false,
            deferred: None,
            started: Instant::now(),
            reserved: 0,
        });
    }

    /// Whether the message in progress must not leave in plaintext: a
    /// failure then defers it whatever the action configured.
    pub fn requires_encryption(&self) -> bool {
        self.message.as_ref().is_some_and(|m| {
            m.direction == Direction::Outbound
                && outbound::encryption_required(&m.rt, &m.sender, &m.recipients)
        })
    }

    pub fn rcpt(&mut self, rcpt: &str) -> Step {
        let Some(m) = self.message.as_mut() else {
            return Step::Continue;
        };
        let rcpt = rcpt.trim().trim_matches(['<', '>']).to_string();
        if m.recipients.len() >= m.rt.config.max_recipients {
            // Only this recipient is refused (452 at RCPT); the message goes
            // on, fully processed, for the others.
            return Step::TooManyRecipients(format!(
                "<{rcpt}>: more than {} recipients",
                m.rt.config.max_recipients
            ));
        }
        // A recipient that requires encryption but has no certificate can be
        // refused alone, so that the message still reaches the others.
        if let (Direction::Outbound, Some(enc), Some(certs)) = (
            m.direction,
            m.rt.config.encrypt.as_ref(),
            m.rt.certs.as_ref(),
        ) {
            if enc.refuse_at_rcpt
                && crate::policy::encrypt_mode(enc, &m.sender, &rcpt) == EncryptMode::Required
            {
                let deadline = Instant::now() + m.rt.config.lookup_budget;
                match certs.find(&rcpt, m.rt.recipient_trust(), deadline) {
                    Lookup::Found(_) => {}
                    Lookup::NotFound => {
                        return Step::RejectRecipient(format!(
                            "<{rcpt}> has no S/MIME certificate and mail to it must be encrypted"
                        ))
                    }
                    Lookup::Error(e) => {
                        return Step::TempfailRecipient(format!(
                            "<{rcpt}>: certificate lookup failed: {e}"
                        ))
                    }
                }
            }
        }
        m.recipients.push(rcpt);
        Step::Continue
    }

    pub fn header(&mut self, name: &str, value: &[u8]) -> Step {
        // Debug builds only: lets the tests prove a panic becomes a tempfail.
        #[cfg(debug_assertions)]
        if name.eq_ignore_ascii_case("X-Smime-Milter-Test-Panic") {
            panic!("test panic requested");
        }
        let Some(m) = self.message.as_mut() else {
            return Step::Continue;
        };
        m.size += (name.len() + value.len() + 4) as u64;
        if m.size > m.rt.config.max_message_size {
            return oversized(m);
        }
        if m.deferred.is_none() {
            let text = String::from_utf8_lossy(value);
            if let std::borrow::Cow::Owned(_) = text {
                m.raw_values.push((m.headers.len(), value.to_vec()));
            }
            m.headers.push((name.to_string(), text.into_owned()));
        }
        Step::Continue
    }

    /// End of headers: the direction and the key are known; decide as much as
    /// possible before the body arrives.
    pub fn end_of_headers(&mut self) -> Step {
        let Some(m) = self.message.as_mut() else {
            return Step::Continue;
        };
        // Decided during the headers, which the MTA sent without waiting.
        if let Some(o) = m.deferred.take() {
            return Step::Done(o);
        }
        let pending = match m.direction {
            Direction::Inbound => match inbound::plan(&m.rt, &m.headers) {
                inbound::Plan::Verify(p) => Pending::Verify(p),
                inbound::Plan::Done(o) => return Step::Done(o),
            },
            Direction::Outbound => {
                match outbound::plan(
                    &m.rt,
                    m.auth_login.as_deref(),
                    &m.sender,
                    &m.recipients,
                    &m.headers,
                    Instant::now() + m.rt.config.lookup_budget,
                ) {
                    Plan::Process(mut work) => {
                        work.raw_values = std::mem::take(&mut m.raw_values);
                        Pending::Process(work)
                    }
                    Plan::Done(o) => return Step::Done(o),
                }
            }
        };
        m.pending = Some(pending);
        Step::Continue
    }

    pub fn body(&mut self, chunk: &[u8]) -> Step {
        let Some(m) = self.message.as_mut() else {
            return Step::Continue;
        };
        // Decided already (the MTA sends the rest without waiting): the
        // rest of the body is not needed.
        if m.deferred.is_some() {
            return Step::Continue;
        }
        m.size += chunk.len() as u64;
        if m.size > m.rt.config.max_message_size {
            m.body = Vec::new();
            release(&mut m.reserved);
            // Inbound with the oversized action accept: the message flows and
            // our header says it was not verified.
            if matches!(m.pending, Some(Pending::Verify(_)))
                && m.rt.config.actions.oversized == crate::config::FailAction::Accept
            {
                m.oversized = true;
                return Step::Continue;
            }
            return oversized(m);
        }
        // Only removing forged headers needs no body.
        if !m.oversized && !matches!(&m.pending, Some(Pending::Verify(p)) if !p.needs_body) {
            // Twice: the body, and the signed, encrypted or decoded copy
            // made of it at end of message.
            if !reserve(&mut m.reserved, 2 * chunk.len(), m.rt.config.memory_limit) {
                m.body = Vec::new();
                release(&mut m.reserved);
                return Step::Done(Outcome::failure(
                    crate::config::FailAction::Tempfail,
                    format!(
                        "memory_limit reached ({} bytes of messages in flight)",
                        m.rt.config.memory_limit
                    ),
                ));
            }
            m.body.extend_from_slice(chunk);
        }
        Step::Continue
    }

    /// End of message: the whole message is here; produce the outcome.
    pub fn end_of_message(&mut self) -> Outcome {
        let Some(m) = self.message.as_mut() else {
            return Outcome::unchanged("no message state");
        };
        if let Some(o) = m.deferred.take() {
            return o;
        }
        match m.pending.take() {
            Some(Pending::Process(work)) => {
                outbound::process_message(&m.rt, &work, &m.headers, &m.body)
            }
            Some(Pending::Verify(p)) => {
                let body = (!m.oversized).then_some(&m.body[..]);
                inbound::verify_message(&m.rt, &p, &m.headers, body, &m.recipients, None)
            }
            None => Outcome::unchanged(m.direction.as_str()),
        }
    }

    /// The message ended (accepted, aborted, or the connection closed).
    pub fn reset(&mut self) {
        if self.message.take().is_some() {
            IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for Session {
    // A connection that closes in the middle of a message.
    fn drop(&mut self) {
        self.reset();
    }
}

fn oversized(m: &Message) -> Step {
    let reason = format!(
        "message larger than max_message_size ({} bytes)",
        m.rt.config.max_message_size
    );
    let mut action = m.rt.config.actions.oversized;
    // Never plaintext where encryption is required.
    if m.direction == Direction::Outbound
        && outbound::encryption_required(&m.rt, &m.sender, &m.recipients)
    {
        action = action.stricter(crate::config::FailAction::Tempfail);
    }
    Step::Done(Outcome::failure(action, reason))
}

/// What follows the MTA's answer: the message counted, and its signer
/// queued for the directory (never before the reply: a write must not hold
/// the message up).
pub fn finished(m: &Message, o: &Outcome) {
    crate::metrics::message(
        m.direction.as_str(),
        o.action,
        o.smime.map_or("none", |r| r.as_str()),
    );
    if o.verdict != crate::outcome::Verdict::Accept {
        return;
    }
    if let (Some(job), Some(store)) = (&o.harvest, &m.rt.harvest_ldap) {
        let (signer, address) = &**job;
        let qid = m.queue_id.as_deref().unwrap_or("NOQUEUE");
        let forget = m.rt.certs.as_ref().map(|c| c.forgetter());
        if store.submit(qid, signer, address, forget) {
            crate::metrics::harvest_queued();
        }
    }
}

/// The one line per message an admin greps for by queue id.
pub fn summary_line(m: &Message, o: &Outcome) -> String {
    let mut s = format!(
        "{}: {} action={} verdict={}",
        m.queue_id.as_deref().unwrap_or("NOQUEUE"),
        m.direction.as_str(),
        o.action,
        o.verdict.word()
    );
    if let Some(d) = &o.detail {
        s.push(' ');
        s.push_str(d);
    }
    if let Some(login) = &m.auth_login {
        s.push_str(&format!(" auth={login}"));
    }
    s.push_str(&format!(
        " size={} time={:.2}ms",
        m.size,
        m.started.elapsed().as_secs_f64() * 1000.0
    ));
    if let Some(r) = &o.reason {
        s.push_str(&format!(" reason=\"{}\"", r.replace('"', "'")));
    }
    escape_controls(&s)
}

/// No byte from a message or certificate may split or forge a log line:
/// control characters are written as escapes.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
