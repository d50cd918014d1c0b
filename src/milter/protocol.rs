//! The milter protocol, version 6, as Sendmail and Postfix speak it: every
//! packet is a 4-byte big-endian length, a command byte and its data.
//! Decoding and encoding only, with no I/O policy; `connection` drives a
//! `Session` with it.
//!
//! We speak it ourselves rather than through libmilter because libmilter
//! reads each packet with a poll and two reads and serves each connection
//! on a thread made for it: through Postfix that was ~40 % of the milter's
//! CPU per message (BENCHMARKS.md). Here a connection's packets are read
//! through one buffer, the replies of a step leave in one write, and
//! threads are reused.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The protocol version we speak (Sendmail 8.14+, Postfix 2.6+).
pub const VERSION: u32 = 6;

/// Actions a milter asks for (SMFIF_*).
pub mod action {
    pub const ADDHDRS: u32 = 0x01;
    pub const CHGBODY: u32 = 0x02;
    pub const CHGHDRS: u32 = 0x10;
    pub const SETSYMLIST: u32 = 0x100;
}

/// Steps the MTA may leave out or send without waiting for a reply
/// (SMFIP_*).
pub mod step {
    pub const NOCONNECT: u64 = 0x01;
    pub const NOHELO: u64 = 0x02;
    pub const NOUNKNOWN: u64 = 0x100;
    pub const NODATA: u64 = 0x200;
    pub const NR_HDR: u64 = 0x80;
    pub const NR_CONN: u64 = 0x1000;
    pub const NR_HELO: u64 = 0x2000;
    pub const NR_MAIL: u64 = 0x4000;
    pub const NR_RCPT: u64 = 0x8000;
    pub const NR_DATA: u64 = 0x10000;
    pub const NR_UNKN: u64 = 0x20000;
    pub const NR_EOH: u64 = 0x40000;
    pub const NR_BODY: u64 = 0x80000;
}

/// Stages a macro list belongs to (SMFIM_*), as numbered in the option
/// negotiation reply.
pub mod stage {
    pub const CONNECT: u32 = 0;
    pub const HELO: u32 = 1;
    pub const ENVFROM: u32 = 2;
    pub const ENVRCPT: u32 = 3;
    pub const DATA: u32 = 4;
    pub const EOM: u32 = 5;
    pub const EOH: u32 = 6;
}

/// The largest packet accepted. MTAs send at most 64 KiB unless a larger
/// size is negotiated (SMFIP_MDS_*), which we never ask for; a little slack
/// costs nothing, and a length beyond it means a broken peer.
pub const MAX_PACKET: usize = 256 * 1024;

/// A connection quiet for this long is dropped (libmilter's default
/// timeout); so is one whose packet is not whole this long after its first
/// byte (checked after each read, so at most one read timeout later).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(7210);

/// The largest body chunk we send (libmilter's MILTER_CHUNK_SIZE).
pub const BODY_CHUNK: usize = 65535;

/// One packet from the MTA, borrowing from the reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    /// Macro values for the command `for_cmd` that follows.
    Macros {
        for_cmd: u8,
        pairs: Vec<(&'a [u8], &'a [u8])>,
    },
    Connect {
        hostname: &'a [u8],
        addr: Option<IpAddr>,
    },
    Helo,
    /// MAIL FROM: the address, then ESMTP parameters.
    Mail(Vec<&'a [u8]>),
    /// RCPT TO: the address, then ESMTP parameters.
    Rcpt(Vec<&'a [u8]>),
    Data,
    Header {
        name: &'a [u8],
        value: &'a [u8],
    },
    EndOfHeaders,
    Body(&'a [u8]),
    /// End of message, possibly with a last body chunk.
    EndOfMessage(&'a [u8]),
    Abort,
    Quit,
    /// QUIT, with a new connection following on the same socket.
    QuitNewConnection,
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("packet of {0} bytes announced, more than {MAX_PACKET}")]
    TooLong(usize),
    #[error("empty packet")]
    Empty,
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    #[error("unknown command {0:?}")]
    UnknownCommand(char),
}

/// A connection's buffers, kept by its thread for the next connection:
/// allocating and freeing them per connection cost page faults and heap
/// trimming.
pub struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
}

/// Room for the largest packet MTAs send (a 65535-byte body chunk, its
/// command byte and length), so that every packet is handed out where it
/// was read: a body chunk is copied once, into the message. A larger packet
/// grows the buffer.
const INPUT: usize = 64 * 1024 + 8;
/// Output gathered before a write; larger writes go out directly.
const OUTPUT: usize = 16 * 1024;

impl Default for Buffers {
    fn default() -> Buffers {
        Buffers {
            input: vec![0; INPUT],
            output: Vec::with_capacity(OUTPUT),
        }
    }
}

impl Buffers {
    /// A reader and a writer over one connection's halves.
    pub fn split<R: Read, W: Write>(
        &mut self,
        input: R,
        output: W,
    ) -> (Reader<'_, R>, Writer<'_, W>) {
        self.output.clear();
        (
            Reader {
                inner: input,
                buf: &mut self.input,
                start: 0,
                end: 0,
            },
            Writer {
                inner: output,
                buf: &mut self.output,
            },
        )
    }
}

/// Reads packets through one buffer, so that the packets the MTA sends
/// without waiting (headers, body chunks, macros) cost one read together.
pub struct Reader<'b, R> {
    inner: R,
    buf: &'b mut Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: Read> Reader<'_, R> {
    /// Reads more into the buffer; false at end of stream. What is
    /// buffered moves to the front only when `need` more bytes would not
    /// fit after it.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next packet's command byte and data; None when the MTA closed the
    /// connection between packets.
    pub fn next_packet(&mut self) -> Result<Option<(u8, &[u8])>, ProtocolError> {
        // A packet must be whole within IDLE_TIMEOUT of its first byte: the
        // socket's timeout alone restarts with every byte.
        let mut started: Option<Instant> = None;
        let in_time = |started: &mut Option<Instant>| -> io::Result<()> {
            let t = *started.get_or_insert_with(Instant::now);
            if t.elapsed() > IDLE_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a packet took longer than the idle timeout",
                ));
            }
            Ok(())
        };
        while self.end - self.start < 4 {
            let had = self.end - self.start;
            if had > 0 {
                in_time(&mut started)?;
            }
            if !self.fill(4)? {
                if had == 0 {
                    return Ok(None);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        let b = &self.buf[self.start..self.start + 4];
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len == 0 {
            return Err(ProtocolError::Empty);
        }
        if len > MAX_PACKET {
            return Err(ProtocolError::TooLong(len));
        }
        if 4 + len > self.buf.len() {
            self.buf.resize(4 + len, 0);
        }
        while self.end - self.start < 4 + len {
            in_time(&mut started)?;
            if !self.fill(4 + len)? {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        let packet = &self.buf[self.start + 4..self.start + 4 + len];
        self.start += 4 + len;
        Ok(Some((packet[0], &packet[1..])))
    }

    /// Whether a whole packet is waiting in the buffer already (reading it
    /// will not block).
    pub fn has_complete_packet(&self) -> bool {
        let b = &self.buf[self.start..self.end];
        b.len() >= 4 && b.len() - 4 >= u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
    }
}

/// Gathers small replies for one write per step; a large one (a replaced
/// body's chunk) goes out with what is gathered in one vectored write,
/// without being copied.
pub struct Writer<'b, W: Write> {
    inner: W,
    buf: &'b mut Vec<u8>,
}

impl<W: Write> Writer<'_, W> {
    fn write_with_gathered(&mut self, data: &[u8]) -> io::Result<()> {
        let mut parts = [io::IoSlice::new(self.buf), io::IoSlice::new(data)];
        let mut parts = &mut parts[..];
        io::IoSlice::advance_slices(&mut parts, 0);
        while !parts.is_empty() {
            match self.inner.write_vectored(parts) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Write for Writer<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() >= OUTPUT / 2 {
            self.write_with_gathered(data)?;
        } else {
            if self.buf.len() + data.len() > OUTPUT {
                self.flush()?;
            }
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Splits NUL-terminated strings; data after the last NUL is an error.
fn strings<'a>(data: &'a [u8], what: &'static str) -> Result<Vec<&'a [u8]>, ProtocolError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = data.strip_suffix(b"\0") else {
        return Err(ProtocolError::Malformed(what));
    };
    Ok(body.split(|&b| b == 0).collect())
}

fn be32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one packet.
pub fn parse(cmd: u8, data: &[u8]) -> Result<Command<'_>, ProtocolError> {
    Ok(match cmd {
        b'O' => {
            let field = |at| be32(data, at).ok_or(ProtocolError::Malformed("option negotiation"));
            Command::OptNeg {
                version: field(0)?,
                actions: field(4)?,
                protocol: field(8)?,
            }
        }
        b'D' => {
            let (&for_cmd, rest) = data
                .split_first()
                .ok_or(ProtocolError::Malformed("macro"))?;
            let list = strings(rest, "macro")?;
            let pairs = list.chunks_exact(2).map(|p| (p[0], p[1])).collect();
            Command::Macros { for_cmd, pairs }
        }
        b'C' => parse_connect(data)?,
        b'H' => Command::Helo,
        b'M' => Command::Mail(strings(data, "MAIL")?),
        b'R' => Command::Rcpt(strings(data, "RCPT")?),
        b'T' => Command::Data,
        b'L' => {
            // A NUL inside a value ends it, as it does for libmilter's C
            // strings.
            let parts = strings(data, "header")?;
            match parts.as_slice() {
                [name, value, ..] => Command::Header { name, value },
                _ => return Err(ProtocolError::Malformed("header")),
            }
        }
        b'N' => Command::EndOfHeaders,
        b'B' => Command::Body(data),
        b'E' => Command::EndOfMessage(data),
        b'A' => Command::Abort,
        b'Q' => Command::Quit,
        b'K' => Command::QuitNewConnection,
        b'U' => Command::Unknown,
        other => return Err(ProtocolError::UnknownCommand(other as char)),
    })
}

/// `hostname NUL family [port address NUL]`, family '4', '6', 'L' (unix
/// socket) or 'U' (unknown).
fn parse_connect(data: &[u8]) -> Result<Command<'_>, ProtocolError> {
    let bad = ProtocolError::Malformed("connect");
    let nul = data.iter().position(|&b| b == 0).ok_or(bad)?;
    let hostname = &data[..nul];
    let rest = &data[nul + 1..];
    let Some((&family, rest)) = rest.split_first() else {
        return Ok(Command::Connect {
            hostname,
            addr: None,
        });
    };
    let addr = match family {
        b'4' | b'6' if rest.len() > 2 => {
            let text = rest[2..].strip_suffix(b"\0").unwrap_or(&rest[2..]);
            let text = std::str::from_utf8(text).unwrap_or("");
            // Sendmail writes IPv6 addresses as "IPv6:...".
            let text = text
                .get(..5)
                .filter(|p| p.eq_ignore_ascii_case("ipv6:"))
                .map_or(text, |_| &text[5..]);
            text.parse().ok()
        }
        _ => None,
    };
    Ok(Command::Connect { hostname, addr })
}

/// What we send back.
#[derive(Debug, PartialEq, Eq)]
pub enum Response<'a> {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
        /// Per stage, the macros we want (space separated).
        macros: &'a [(u32, &'a str)],
    },
    Continue,
    Accept,
    Reject,
    Tempfail,
    /// A full SMTP reply ("451 4.7.0 text") for a reject or tempfail.
    ReplyCode(&'a str),
    AddHeader {
        name: &'a str,
        value: &'a str,
    },
    InsertHeader {
        index: u32,
        name: &'a str,
        value: &'a str,
    },
    /// The `index`th (from 1) header called `name`; an empty value deletes it.
    ChangeHeader {
        index: u32,
        name: &'a str,
        value: &'a str,
    },
    /// A chunk of the new body; successive chunks append.
    ReplaceBody(&'a [u8]),
}

/// Encodes one response into `w` (a buffered writer: the caller flushes
/// once per step).
pub fn write_response(w: &mut impl Write, r: &Response) -> io::Result<()> {
    fn packet(w: &mut impl Write, cmd: u8, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
        let len = u32::try_from(len).map_err(|_| io::Error::other("response too long"))?;
        w.write_all(&len.to_be_bytes())?;
        w.write_all(&[cmd])?;
        for p in parts {
            w.write_all(p)?;
        }
        Ok(())
    }
    let nul: &[u8] = b"\0";
    match r {
        Response::OptNeg {
            version,
            actions,
            protocol,
            macros,
        } => {
            let mut data = Vec::with_capacity(64);
            data.extend_from_slice(&version.to_be_bytes());
            data.extend_from_slice(&actions.to_be_bytes());
            data.extend_from_slice(&protocol.to_be_bytes());
            for (stage, list) in macros.iter() {
                data.extend_from_slice(&stage.to_be_bytes());
                data.extend_from_slice(list.as_bytes());
                data.push(0);
            }
            packet(w, b'O', &[&data])
        }
        Response::Continue => packet(w, b'c', &[]),
        Response::Accept => packet(w, b'a', &[]),
        Response::Reject => packet(w, b'r', &[]),
        Response::Tempfail => packet(w, b't', &[]),
        Response::ReplyCode(text) => packet(w, b'y', &[text.as_bytes(), nul]),
        Response::AddHeader { name, value } => {
            packet(w, b'h', &[name.as_bytes(), nul, value.as_bytes(), nul])
        }
        Response::InsertHeader { index, name, value } => packet(
            w,
            b'i',
            &[
                &index.to_be_bytes(),
                name.as_bytes(),
                nul,
                value.as_bytes(),
                nul,
            ],
        ),
        Response::ChangeHeader { index, name, value } => packet(
            w,
            b'm',
            &[
                &index.to_be_bytes(),
                name.as_bytes(),
                nul,
                value.as_bytes(),
                nul,
            ],
        ),
        Response::ReplaceBody(chunk) => packet(w, b'b', &[chunk]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cmd: u8, data: &[u8]) -> Vec<u8> {
        let mut v = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(cmd);
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn packets_are_read_back_to_back_and_end_cleanly() {
        let mut wire = frame(b'L', b"From\0a@b\0");
        wire.extend(frame(b'N', b""));
        let mut bufs = Buffers::default();
        let (mut r, _) = bufs.split(&wire[..], Vec::new());
        let (c, d) = r.next_packet().unwrap().unwrap();
        assert_eq!(
            parse(c, d).unwrap(),
            Command::Header {
                name: b"From",
                value: b"a@b"
            }
        );
        assert!(r.has_complete_packet());
        let (c, d) = r.next_packet().unwrap().unwrap();
        assert_eq!(parse(c, d).unwrap(), Command::EndOfHeaders);
        assert!(r.next_packet().unwrap().is_none());
    }

    #[test]
    fn truncated_oversized_and_empty_packets_are_errors() {
        let mut bufs = Buffers::default();
        let mut next = |wire: &[u8]| {
            let (mut r, _) = bufs.split(wire, Vec::new());
            r.next_packet().map(|p| p.map(|(c, d)| (c, d.to_vec())))
        };
        let wire = frame(b'B', b"abcdef");
        assert!(matches!(
            next(&wire[..wire.len() - 2]),
            Err(ProtocolError::Io(_))
        ));
        assert!(matches!(next(&[0u8, 0, 0, 0]), Err(ProtocolError::Empty)));
        let huge = ((MAX_PACKET + 1) as u32).to_be_bytes();
        assert!(matches!(next(&huge), Err(ProtocolError::TooLong(_))));
        assert!(matches!(next(&[0u8, 0]), Err(ProtocolError::Io(_))));
        // Large, and split over many reads (a slice reader gives all at
        // once; the chained one in two parts).
        let big = vec![7u8; 200_000];
        let wire = frame(b'B', &big);
        let (c, d) = next(&wire).unwrap().unwrap();
        assert_eq!((c, d.len()), (b'B', big.len()));
        let mut two = frame(b'L', b"A\0b\0");
        two.extend_from_slice(&wire);
        two.extend_from_slice(&wire);
        let mut bufs = Buffers::default();
        let (mut r, _) = bufs.split(std::io::Read::chain(&two[..100], &two[100..]), Vec::new());
        assert_eq!(r.next_packet().unwrap().unwrap().0, b'L');
        for _ in 0..2 {
            let (c, d) = r.next_packet().unwrap().unwrap();
            assert_eq!((c, d), (b'B', &big[..]));
        }
        assert!(r.next_packet().unwrap().is_none());
    }

    #[test]
    fn writer_keeps_the_order_of_small_and_large_writes() {
        let mut bufs = Buffers::default();
        let mut sink = Vec::new();
        {
            let (_, mut w) = bufs.split(&b""[..], &mut sink);
            w.write_all(b"head").unwrap();
            w.write_all(&vec![1u8; OUTPUT + 10]).unwrap();
            w.write_all(b"tail").unwrap();
            w.flush().unwrap();
        }
        assert_eq!(sink.len(), 8 + OUTPUT + 10);
        assert!(sink.starts_with(b"head\x01") && sink.ends_with(b"\x01tail"));
    }

    #[test]
    fn commands_decode() {
        let mut opt = Vec::new();
        for v in [6u32, 0x1ff, 0x1fffff] {
            opt.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(
            parse(b'O', &opt).unwrap(),
            Command::OptNeg {
                version: 6,
                actions: 0x1ff,
                protocol: 0x1fffff
            }
        );
        assert!(parse(b'O', &opt[..8]).is_err());
        assert_eq!(
            parse(b'D', b"Mi\0ABC123\0{auth_authen}\0alice\0").unwrap(),
            Command::Macros {
                for_cmd: b'M',
                pairs: vec![(&b"i"[..], &b"ABC123"[..]), (b"{auth_authen}", b"alice")]
            }
        );
        assert_eq!(
            parse(b'M', b"<a@b>\0SIZE=10\0").unwrap(),
            Command::Mail(vec![&b"<a@b>"[..], b"SIZE=10"])
        );
        assert!(parse(b'M', b"<a@b>").is_err(), "no terminating NUL");
        assert!(parse(b'L', b"From\0").is_err());
        assert_eq!(
            parse(b'L', b"X-Nul\0a\0b\0").unwrap(),
            Command::Header {
                name: b"X-Nul",
                value: b"a"
            }
        );
        assert_eq!(parse(b'E', b"").unwrap(), Command::EndOfMessage(b""));
        assert!(matches!(
            parse(b'Z', b""),
            Err(ProtocolError::UnknownCommand('Z'))
        ));
    }

    #[test]
    fn connect_addresses_of_each_family() {
        let c = |data: &[u8]| match parse(b'C', data).unwrap() {
            Command::Connect { addr, .. } => addr,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            c(b"host\x004\x00\x19192.0.2.1\0"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            c(b"host\x006\x00\x19IPv6:2001:db8::1\0"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(c(b"host\x006\x00\x19::1\0"), Some("::1".parse().unwrap()));
        assert_eq!(c(b"host\0U"), None);
        assert_eq!(c(b"host\0L\0\0/run/sock\0"), None);
        assert!(parse(b'C', b"no nul").is_err());
    }

    #[test]
    fn responses_encode_as_the_mta_expects() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &Response::OptNeg {
                version: 6,
                actions: 0x13,
                protocol: 0x80,
                macros: &[(stage::ENVFROM, "i {auth_authen}")],
            },
        )
        .unwrap();
        let mut want = vec![0, 0, 0, 6, 0, 0, 0, 0x13, 0, 0, 0, 0x80, 0, 0, 0, 2];
        want.extend_from_slice(b"i {auth_authen}\0");
        assert_eq!(out, frame(b'O', &want));

        out.clear();
        write_response(&mut out, &Response::ReplyCode("451 4.7.0 later")).unwrap();
        assert_eq!(out, frame(b'y', b"451 4.7.0 later\0"));
        out.clear();
        write_response(
            &mut out,
            &Response::ChangeHeader {
                index: 2,
                name: "X",
                value: "",
            },
        )
        .unwrap();
        assert_eq!(out, frame(b'm', b"\0\0\0\x02X\0\0"));
        out.clear();
        write_response(&mut out, &Response::ReplaceBody(b"body")).unwrap();
        assert_eq!(out, frame(b'b', b"body"));
    }
}
