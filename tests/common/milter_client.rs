//! A small milter protocol (version 6) client playing the MTA, for tests and
//! benchmarks. Debian's miltertest crashes when a milter replaces a body of
//! more than 1 KB (OpenDKIM issue #66), which every signature does.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const SMFIP_NOCONNECT: u32 = 0x1;
const SMFIP_NOMAIL: u32 = 0x4;
const SMFIP_NORCPT: u32 = 0x8;
const SMFIP_NOBODY: u32 = 0x10;
const SMFIP_NOHDRS: u32 = 0x20;
const SMFIP_NOEOH: u32 = 0x40;
const SMFIP_NR_HDR: u32 = 0x80;
const SMFIP_NR_CONN: u32 = 0x1000;
const SMFIP_NR_MAIL: u32 = 0x4000;
const SMFIP_NR_RCPT: u32 = 0x8000;
const SMFIP_NR_EOH: u32 = 0x40000;
const SMFIP_NR_BODY: u32 = 0x80000;

/// The milter's final word on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    /// SMFIR_REPLYCODE with its text, e.g. "451 4.7.0 ...".
    Code(String),
}

/// A modification requested at end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    AddHeader(String, String),
    ChangeHeader(u32, String, String),
    InsertHeader(u32, String, String),
    ReplaceBody(Vec<u8>),
}

#[derive(Debug)]
pub struct MessageResult {
    /// The reply at the stage where the milter decided.
    pub reply: Reply,
    pub modifications: Vec<Modification>,
}

impl MessageResult {
    pub fn new_body(&self) -> Option<Vec<u8>> {
        let mut body: Option<Vec<u8>> = None;
        for m in &self.modifications {
            if let Modification::ReplaceBody(chunk) = m {
                body.get_or_insert_with(Vec::new).extend_from_slice(chunk);
            }
        }
        body
    }

    /// Applies the modifications to `headers` and `body` as an MTA would.
    pub fn apply(&self, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
        let mut h: Vec<(String, String)> = headers.to_vec();
        for m in &self.modifications {
            match m {
                Modification::AddHeader(n, v) => h.push((n.clone(), v.clone())),
                Modification::InsertHeader(i, n, v) => {
                    h.insert((*i as usize).min(h.len()), (n.clone(), v.clone()))
                }
                Modification::ChangeHeader(i, n, v) => {
                    let pos = h
                        .iter()
                        .enumerate()
                        .filter(|(_, (hn, _))| hn.eq_ignore_ascii_case(n))
                        .nth((*i as usize).saturating_sub(1))
                        .map(|(p, _)| p);
                    match (pos, v.is_empty()) {
                        (Some(p), true) => {
                            h.remove(p);
                        }
                        (Some(p), false) => h[p].1 = v.clone(),
                        (None, false) => h.push((n.clone(), v.clone())),
                        (None, true) => {}
                    }
                }
                Modification::ReplaceBody(_) => {}
            }
        }
        let mut out = Vec::new();
        for (n, v) in &h {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.new_body().as_deref().unwrap_or(body));
        out
    }
}

pub struct MilterClient {
    stream: UnixStream,
    /// Protocol flags the milter asked for.
    pflags: u32,
    /// Called once after this many body chunks have been sent (to hold
    /// messages half-sent, so that they are in flight together).
    pub pause: Option<(usize, Box<dyn Fn() + Send>)>,
}

/// A parsed message: headers (name, value) and body in SMTP form (CRLF).
pub fn split_message(raw: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let norm_end = text
        .find("\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| text.find("\n\n").map(|i| (i, 2)));
    let (head, body_start) = match norm_end {
        Some((i, l)) => (&text[..i], i + l),
        None => (&text[..], raw.len()),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.to_string(), v.trim_start().to_string()));
        }
    }
    let mut body = Vec::new();
    let raw_body = &raw[body_start.min(raw.len())..];
    for (i, &b) in raw_body.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw_body[i - 1] != b'\r') {
            body.push(b'\r');
        }
        body.push(b);
    }
    (headers, body)
}

impl MilterClient {
    pub fn connect(path: &std::path::Path) -> std::io::Result<MilterClient> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = MilterClient {
            stream,
            pflags: 0,
            pause: None,
        };
        // Version 6, all actions, and every step the milter may skip.
        let mut data = Vec::new();
        data.extend_from_slice(&6u32.to_be_bytes());
        data.extend_from_slice(&0x1ffu32.to_be_bytes());
        data.extend_from_slice(&0x1fffffu32.to_be_bytes());
        c.send(b'O', &data)?;
        let (cmd, resp) = c.read()?;
        assert_eq!(cmd, b'O', "negotiation reply");
        c.pflags = u32::from_be_bytes(resp[8..12].try_into().unwrap());
        Ok(c)
    }

    fn send(&mut self, cmd: u8, data: &[u8]) -> std::io::Result<()> {
        let mut pkt = Vec::with_capacity(data.len() + 5);
        pkt.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
        pkt.push(cmd);
        pkt.extend_from_slice(data);
        self.stream.write_all(&pkt)
    }

    fn read(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf)?;
        let cmd = buf[0];
        buf.remove(0);
        Ok((cmd, buf))
    }

    /// Reads replies until a final one (skipping progress notices).
    fn reply(&mut self) -> std::io::Result<Reply> {
        loop {
            let (cmd, data) = self.read()?;
            return Ok(match cmd {
                b'c' => Reply::Continue,
                b'a' => Reply::Accept,
                b'r' => Reply::Reject,
                b't' => Reply::Tempfail,
                b'd' => Reply::Discard,
                b'y' => Reply::Code(
                    String::from_utf8_lossy(&data)
                        .trim_end_matches('\0')
                        .to_string(),
                ),
                b'p' => continue,
                other => panic!("unexpected milter reply '{}'", other as char),
            });
        }
    }

    fn step(
        &mut self,
        cmd: u8,
        data: &[u8],
        skip: u32,
        no_reply: u32,
    ) -> std::io::Result<Option<Reply>> {
        if self.pflags & skip != 0 {
            return Ok(None);
        }
        self.send(cmd, data)?;
        if self.pflags & no_reply != 0 {
            return Ok(None);
        }
        let r = self.reply()?;
        Ok(if r == Reply::Continue { None } else { Some(r) })
    }

    fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) -> std::io::Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut data = vec![stage];
        for (n, v) in pairs {
            data.extend_from_slice(n.as_bytes());
            data.push(0);
            data.extend_from_slice(v.as_bytes());
            data.push(0);
        }
        self.send(b'D', &data)
    }

    /// Announces the client connection (IPv4).
    pub fn connect_info(&mut self, ip: &str) -> std::io::Result<Option<Reply>> {
        let mut data = b"client.example.net\0".to_vec();
        data.push(b'4');
        data.extend_from_slice(&25u16.to_be_bytes());
        data.extend_from_slice(ip.as_bytes());
        data.push(0);
        self.step(b'C', &data, SMFIP_NOCONNECT, SMFIP_NR_CONN)
    }

    /// Runs one message through the milter, as Postfix would.
    pub fn message(
        &mut self,
        queue_id: &str,
        auth: Option<&str>,
        from: &str,
        rcpts: &[&str],
        headers: &[(String, String)],
        body: &[u8],
    ) -> std::io::Result<MessageResult> {
        let done = |reply| MessageResult {
            reply,
            modifications: vec![],
        };
        let mut mail_macros = vec![("i", queue_id)];
        if let Some(a) = auth {
            mail_macros.push(("{auth_authen}", a));
        }
        self.macros(b'M', &mail_macros)?;
        if let Some(r) = self.step(
            b'M',
            format!("<{from}>\0").as_bytes(),
            SMFIP_NOMAIL,
            SMFIP_NR_MAIL,
        )? {
            return Ok(done(r));
        }
        for r in rcpts {
            if let Some(r) = self.step(
                b'R',
                format!("<{r}>\0").as_bytes(),
                SMFIP_NORCPT,
                SMFIP_NR_RCPT,
            )? {
                return Ok(done(r));
            }
        }
        for (n, v) in headers {
            let data = [n.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat();
            if let Some(r) = self.step(b'L', &data, SMFIP_NOHDRS, SMFIP_NR_HDR)? {
                return Ok(done(r));
            }
        }
        self.macros(b'N', &[("i", queue_id)])?;
        if let Some(r) = self.step(b'N', &[], SMFIP_NOEOH, SMFIP_NR_EOH)? {
            return Ok(done(r));
        }
        for (i, chunk) in body.chunks(65535).enumerate() {
            if let Some(r) = self.step(b'B', chunk, SMFIP_NOBODY, SMFIP_NR_BODY)? {
                return Ok(done(r));
            }
            if let Some((n, pause)) = &self.pause {
                if i + 1 == *n {
                    pause();
                }
            }
        }
        self.macros(b'E', &[("i", queue_id)])?;
        self.send(b'E', &[])?;
        let mut modifications = Vec::new();
        loop {
            let (cmd, data) = self.read()?;
            let cstrs = |d: &[u8]| -> Vec<String> {
                d.split(|&b| b == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            match cmd {
                b'h' => {
                    let s = cstrs(&data);
                    modifications.push(Modification::AddHeader(s[0].clone(), s[1].clone()));
                }
                b'm' | b'i' => {
                    let idx = u32::from_be_bytes(data[..4].try_into().unwrap());
                    let s = cstrs(&data[4..]);
                    modifications.push(if cmd == b'm' {
                        Modification::ChangeHeader(idx, s[0].clone(), s[1].clone())
                    } else {
                        Modification::InsertHeader(idx, s[0].clone(), s[1].clone())
                    });
                }
                b'b' => modifications.push(Modification::ReplaceBody(data)),
                b'p' => {}
                b'c' => {
                    return Ok(MessageResult {
                        reply: Reply::Continue,
                        modifications,
                    })
                }
                b'a' => {
                    return Ok(MessageResult {
                        reply: Reply::Accept,
                        modifications,
                    })
                }
                b'r' => {
                    return Ok(MessageResult {
                        reply: Reply::Reject,
                        modifications,
                    })
                }
                b't' => {
                    return Ok(MessageResult {
                        reply: Reply::Tempfail,
                        modifications,
                    })
                }
                b'd' => {
                    return Ok(MessageResult {
                        reply: Reply::Discard,
                        modifications,
                    })
                }
                b'y' => {
                    let text = String::from_utf8_lossy(&data)
                        .trim_end_matches('\0')
                        .to_string();
                    return Ok(MessageResult {
                        reply: Reply::Code(text),
                        modifications,
                    });
                }
                other => panic!("unexpected end-of-message reply '{}'", other as char),
            }
        }
    }

    pub fn quit(mut self) {
        let _ = self.send(b'Q', &[]);
    }
}

/// One raw message on a new connection from `client_ip`, as Postfix would
/// pass it: the milter's result, and the message as the MTA would deliver
/// it.
pub fn send_one(
    socket: &std::path::Path,
    client_ip: &str,
    queue_id: &str,
    from: &str,
    rcpts: &[&str],
    raw: &[u8],
) -> (MessageResult, Vec<u8>) {
    let (h, b) = split_message(raw);
    let r = send_parts(socket, client_ip, queue_id, from, rcpts, &h, &b);
    let out = r.apply(&h, &b);
    (r, out)
}

/// One message given as header fields and body on a new connection from
/// `client_ip`: the milter's result.
#[allow(dead_code)]
pub fn send_parts(
    socket: &std::path::Path,
    client_ip: &str,
    queue_id: &str,
    from: &str,
    rcpts: &[&str],
    headers: &[(String, String)],
    body: &[u8],
) -> MessageResult {
    let mut c = MilterClient::connect(socket).unwrap();
    c.connect_info(client_ip).unwrap();
    let r = c
        .message(queue_id, None, from, rcpts, headers, body)
        .unwrap();
    c.quit();
    r
}
