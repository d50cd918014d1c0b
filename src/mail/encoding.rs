//! Content-Transfer-Encodings we write (RFC 2045 §6.7, §6.8), made to
//! survive relays: no line ends in a space or tab, none starts with
//! `From ` (RFC 8551 §3.1.1), none is longer than 76 characters.

use memchr::memchr;

/// Base64 in lines of 76 characters with CRLF (RFC 2045 §6.8).
pub fn push_base64_lines(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len() / 57 * 78 + 80);
    // Encode many lines per call: one allocation per 1024 lines, not per line.
    for block in data.chunks(57 * 1024) {
        let text = openssl::base64::encode_block(block);
        for line in text.as_bytes().chunks(76) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The lines of a text: each without its line end (LF or CRLF), and
/// whether a line end followed it.
fn lines(text: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match memchr(b'\n', t) {
            Some(i) => {
                rest = Some(&t[i + 1..]);
                let line = &t[..i];
                Some((line.strip_suffix(b"\r").unwrap_or(line), true))
            }
            None => {
                rest = None;
                (!t.is_empty()).then_some((t, false))
            }
        }
    })
}

/// Whether quoted-printable is no longer than base64 for this text.
pub fn quoted_printable_is_shorter(text: &[u8]) -> bool {
    let escaped = text
        .iter()
        .filter(|&&b| match b {
            b'=' => true,
            b' ' | b'\t' | b'\r' | b'\n' => false,
            b => !(33..=126).contains(&b),
        })
        .count();
    // Each escape costs two more bytes; base64 a third more, and a line
    // end per 57 bytes.
    let base64 = text.len().div_ceil(3) * 4 + 2 * text.len().div_ceil(57);
    text.len() + 2 * escaped <= base64
}

/// Quoted-printable (RFC 2045 §6.7) of a text whose line ends are LF or
/// CRLF; they become CRLF. A space or tab before a line end, `=`, bytes
/// outside printable ASCII (a CR that ends no line included) and the `F`
/// of a line starting `From ` are escaped; lines are broken softly at 76.
pub fn push_quoted_printable(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + text.len() / 8 + 2);
    for (line, ended) in lines(text) {
        qp_line(out, line);
        if ended {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Quoted-printable where only CRLF is a line end: a lone LF or CR is
/// escaped, so the text decodes back byte for byte.
fn push_quoted_printable_exact(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + text.len() / 8 + 2);
    let mut rest = text;
    loop {
        match memchr::memmem::find(rest, b"\r\n") {
            Some(i) => {
                qp_line(out, &rest[..i]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[i + 2..];
            }
            None => {
                qp_line(out, rest);
                return;
            }
        }
    }
}

fn qp_line(out: &mut Vec<u8>, line: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let plain = |j: usize, col: usize| match line[j] {
        b' ' | b'\t' => j + 1 < line.len(),
        b'=' => false,
        b'F' if col == 0 => !line[j..].starts_with(b"From "),
        b => (33..=126).contains(&b),
    };
    let mut col = 0;
    for (j, &b) in line.iter().enumerate() {
        let mut p = plain(j, col);
        // Room for the `=` of a soft line break: 76 columns at most.
        if col + if p { 1 } else { 3 } > 75 {
            out.extend_from_slice(b"=\r\n");
            col = 0;
            p = plain(j, col);
        }
        if p {
            out.push(b);
            col += 1;
        } else {
            out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            col += 3;
        }
    }
}

/// Quoted-printable as a lenient reader decodes it (RFC 2045 §6.7): blanks
/// before a line end dropped, `=` and a line end joined, `=XX` a byte, and
/// anything else (raw 8-bit bytes, an `=` that starts no escape) as it is.
pub fn decode_quoted_printable(text: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(text.len());
    for (line, ended) in lines(text) {
        let line = line.trim_ascii_end();
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            let escaped = if line[i] == b'=' {
                line.get(i + 1..i + 3)
                    .and_then(|h| Some((hex(h[0])? << 4) | hex(h[1])?))
            } else {
                None
            };
            match escaped {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(line[i]);
                    i += 1;
                }
            }
        }
        if ended && !soft {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// The value of a base64 character.
pub fn base64_value(b: u8) -> Option<u32> {
    Some(u32::from(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

/// Base64 as lenient decoders read it (RFC 2045 §6.8): what is not in the
/// alphabet is skipped, and padding restarts, as for concatenated chunks.
pub fn decode_base64(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in text {
        if b == b'=' {
            (acc, bits) = (0, 0);
            continue;
        }
        let Some(v) = base64_value(b) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A quoted-printable body a relay could change (fragile lines, raw 8-bit
/// bytes, long lines), encoded anew: it decodes to what it did.
pub fn push_requoted(out: &mut Vec<u8>, body: &[u8]) {
    push_quoted_printable_exact(out, &decode_quoted_printable(body));
}

/// A base64 body with only its alphabet kept, in lines of 76: decoders
/// ignore everything else (RFC 2045 §6.8), so it decodes to what it did.
pub fn push_rewrapped_base64(out: &mut Vec<u8>, body: &[u8]) {
    let kept: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        .collect();
    out.reserve(kept.len() + kept.len() / 38 + 2);
    for line in kept.chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2045 §6.7 decoding, trailing blanks dropped.
    fn qp_decode(t: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let text = String::from_utf8(t.to_vec()).unwrap();
        let mut lines = text.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            let line = line.trim_end_matches([' ', '\t']);
            let (line, soft) = match line.strip_suffix('=') {
                Some(l) => (l, true),
                None => (line, false),
            };
            let b = line.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'=' {
                    out.push(u8::from_str_radix(&line[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            if !soft && lines.peek().is_some() {
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    fn qp(t: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_quoted_printable(&mut out, t);
        out
    }

    fn relay_safe(out: &[u8]) -> bool {
        out.split(|&b| b == b'\n').all(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            l.len() <= 76 && !l.ends_with(b" ") && !l.ends_with(b"\t") && !l.starts_with(b"From ")
        }) && out.is_ascii()
    }

    #[test]
    fn quoted_printable_escapes_what_relays_change() {
        let out = qp(b"From the start\r\ntrailing \r\ntab\t\r\n= sign\r\n");
        assert_eq!(
            out,
            b"=46rom the start\r\ntrailing=20\r\ntab=09\r\n=3D sign\r\n"
        );
        // A soft break may put `From ` at the start of a line: escaped too.
        let mut t = vec![b'x'; 75];
        t.extend_from_slice(b"From here ");
        let out = qp(&t);
        assert!(relay_safe(&out), "{}", String::from_utf8_lossy(&out));
        assert_eq!(qp_decode(&out), t);
    }

    #[test]
    fn quoted_printable_round_trips_any_bytes() {
        let mut x: u32 = 12345;
        for round in 0..2000 {
            let len = round % 400;
            let t: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    match (x >> 16) % 12 {
                        0 => b' ',
                        1 => b'\t',
                        2 => b'\r',
                        3 => b'=',
                        4 => 0xc3,
                        5..=6 => b"From "[(x as usize >> 3) % 5],
                        _ => b'a' + ((x >> 20) % 26) as u8,
                    }
                })
                .collect();
            // Line ends are CRLF, as in canonical text.
            let t = [t.as_slice(), b"\r\n"].concat().repeat(1 + round % 3);
            let out = qp(&t);
            assert!(relay_safe(&out), "{}", String::from_utf8_lossy(&out));
            assert_eq!(qp_decode(&out), t, "{}", String::from_utf8_lossy(&out));
        }
        // Bare LF becomes CRLF; a CR that ends no line is kept as =0D.
        assert_eq!(qp(b"a\nb\rc"), b"a\r\nb=0Dc");
    }

    #[test]
    fn shorter_encoding_is_chosen() {
        assert!(quoted_printable_is_shorter(
            b"mostly ascii text \xc3\xa4\r\n"
        ));
        assert!(!quoted_printable_is_shorter(&[0xd0u8; 100]));
    }

    #[test]
    fn encoded_bodies_are_encoded_anew_to_what_they_decode_to() {
        // Fragile lines, a raw 8-bit byte, a long line, a lone LF escaped,
        // an `=` that starts no escape.
        let mut long = b"x".repeat(120);
        long.extend_from_slice(b"=\r\n");
        let body = [
            &b"From x=3D \r\nabc=  \r\ndef \xc3\xa4 =0A=0d=zz=\r\n"[..],
            &long,
            b"end",
        ]
        .concat();
        let mut out = Vec::new();
        push_requoted(&mut out, &body);
        assert!(relay_safe(&out), "{}", String::from_utf8_lossy(&out));
        assert_eq!(
            decode_quoted_printable(&out),
            decode_quoted_printable(&body)
        );
        assert_eq!(
            decode_quoted_printable(&body),
            [
                &b"From x=\r\nabcdef \xc3\xa4 \n\r=zz"[..],
                &b"x".repeat(120),
                b"end"
            ]
            .concat()
        );
        let mut out = Vec::new();
        push_rewrapped_base64(&mut out, b"aGVs bG8= \r\nFrom \xff\r\n");
        assert_eq!(out, b"aGVsbG8=From\r\n");
    }

    #[test]
    fn base64_lines_are_76_columns() {
        let mut out = Vec::new();
        push_base64_lines(&mut out, &[7u8; 200]);
        let s = String::from_utf8(out).unwrap();
        assert!(s.lines().all(|l| l.len() <= 76));
        assert_eq!(s.lines().next().unwrap().len(), 76);
        let joined: String = s.split_whitespace().collect();
        assert_eq!(
            openssl::base64::decode_block(&joined).unwrap(),
            vec![7u8; 200]
        );
    }
}
