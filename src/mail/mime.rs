//! MIME structure, as far as signing needs it: header fields, Content-Type
//! parameters, multipart splitting, CRLF canonical form (RFC 8551 §3.1.1) and
//! re-encoding the parts a relay could change (§3.1.2).
//!
//! Everything works on borrowed slices of the message as received; the only
//! copy is the one into the output buffer.

use super::encoding;
use memchr::{memchr, memchr_iter, memmem};

/// Limits that bound the work on one message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: usize,
    pub max_parts: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MimeError {
    #[error("MIME nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("multipart entity without a boundary parameter")]
    NoBoundary,
    #[error("multipart boundary \"{0}\" never occurs in the body")]
    BoundaryNotFound(String),
    #[error("composite entity with Content-Transfer-Encoding {0}")]
    EncodedComposite(String),
    #[error("8-bit data inside a {0} encoded part")]
    EightBitInEncoded(String),
    #[error("more than {0} parts in one multipart")]
    TooManyParts(usize),
}

/// One header field of an entity, borrowed from the raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub name: &'a str,
    /// The whole field as transmitted, folding and line end included.
    pub raw: &'a [u8],
    /// The value after the colon, still folded.
    pub value: &'a [u8],
}

impl Field<'_> {
    /// The value unfolded, for parsing (invalid UTF-8 replaced).
    pub fn unfolded(&self) -> String {
        unfold(&String::from_utf8_lossy(self.value))
    }
}

/// Joins folded lines (RFC 5322 §2.2.3) and trims the ends.
pub fn unfold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, line) in value.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if i > 0 {
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            out.push_str(line);
        }
    }
    out.trim().to_string()
}

/// Splits an entity into its header block (up to and including the line end
/// of the last field) and its body (after the empty line).
pub fn split_entity(entity: &[u8]) -> (&[u8], &[u8]) {
    if entity.starts_with(b"\r\n") {
        return (&entity[..0], &entity[2..]);
    }
    if entity.starts_with(b"\n") {
        return (&entity[..0], &entity[1..]);
    }
    for nl in memchr_iter(b'\n', entity) {
        let rest = &entity[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return (&entity[..nl + 1], &rest[2..]);
        }
        if rest.starts_with(b"\n") {
            return (&entity[..nl + 1], &rest[1..]);
        }
    }
    // No empty line: all header, no body.
    (entity, &entity[entity.len()..])
}

/// `split_entity` for content that may have no header at all (eContent
/// or plaintext "Hello\r\n"): when its first line is not a header field,
/// all of it is body, never dropped as a header block.
pub fn entity_parts(entity: &[u8]) -> (&[u8], &[u8]) {
    let first = entity.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let is_field = memchr(b':', first)
        .is_some_and(|c| c > 0 && first[..c].iter().all(|b| b.is_ascii_graphic()));
    if is_field || entity.starts_with(b"\r\n") || entity.starts_with(b"\n") {
        split_entity(entity)
    } else {
        (&entity[..0], entity)
    }
}

/// Without an mbox `From ` line at the start, which readers such as
/// Python's `email` skip before the header.
pub fn skip_mbox_from(entity: &[u8]) -> &[u8] {
    if entity.starts_with(b"From ") {
        memchr(b'\n', entity).map_or(&entity[entity.len()..], |i| &entity[i + 1..])
    } else {
        entity
    }
}

/// The fields of a header block. Lines that are not fields (no colon) are
/// kept as part of the previous field so that nothing is silently dropped.
pub fn parse_fields(block: &[u8]) -> Vec<Field<'_>> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut start = 0;
    while start < block.len() {
        let end = memchr(b'\n', &block[start..]).map_or(block.len(), |i| start + i + 1);
        let line = &block[start..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        let colon = memchr(b':', line);
        // `Name :` is a field too (RFC 5322 §4.5 obsolete syntax), as
        // Postfix reads it.
        let name_len = colon.map(|c| {
            line[..c]
                .iter()
                .rposition(|b| !matches!(b, b' ' | b'\t'))
                .map_or(0, |p| p + 1)
        });
        match (continuation, colon, fields.last_mut()) {
            (false, Some(c), _)
                if name_len
                    .is_some_and(|n| n > 0 && line[..n].iter().all(|b| b.is_ascii_graphic())) =>
            {
                let name = std::str::from_utf8(&line[..name_len.unwrap_or(0)]).unwrap_or("");
                fields.push(Field {
                    name,
                    raw: &block[start..end],
                    value: &block[start + c + 1..end],
                });
            }
            (_, _, Some(last)) => {
                let from = last.raw.as_ptr() as usize - block.as_ptr() as usize;
                let vfrom = last.value.as_ptr() as usize - block.as_ptr() as usize;
                last.raw = &block[from..end];
                last.value = &block[vfrom..end];
            }
            _ => {}
        }
        start = end;
    }
    fields
}

/// Whether a field has this name as a reader matches it: in any case, and
/// `Name :` (RFC 5322 §4.5.3, obsolete but read) is `Name`.
pub fn is_named(field: &str, name: &str) -> bool {
    field
        .trim_end_matches([' ', '\t'])
        .eq_ignore_ascii_case(name)
}

/// The values of the header fields with this name, in order.
pub fn values_named<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| is_named(n, name))
        .map(|(_, v)| v.as_str())
}

/// The unfolded value of the one field with this name; `None` when there
/// is none or more than one (a reader could show either: RFC 5322 allows
/// one From, and a verdict or signature must not pick).
pub fn only_value(headers: &[(String, String)], name: &str) -> Option<String> {
    let mut values = values_named(headers, name);
    match (values.next(), values.next()) {
        (Some(v), None) => Some(unfold(v)),
        _ => None,
    }
}

/// The unfolded value of the first field with this name.
pub fn field_value(fields: &[Field<'_>], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|f| is_named(f.name, name))
        .map(|f| f.unfolded())
}

/// A parsed Content-Type value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// `type/subtype`, lower case.
    pub mime_type: String,
    /// Parameters with lower-case names, values unquoted.
    pub params: Vec<(String, String)>,
}

/// What an entity's Content-Type says of S/MIME (RFC 8551 §3.2): the one
/// place an entity is classified by its media type, `protocol`,
/// `smime-type` and `name` (the signature part of a multipart/signed is
/// checked where it is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmimeKind {
    /// Neither multipart/signed nor pkcs7-mime.
    NotSmime,
    /// multipart/signed with an S/MIME protocol.
    ClearSigned,
    /// multipart/signed with a PGP protocol.
    PgpSigned,
    /// multipart/signed with no protocol or one we do not know.
    OtherSigned,
    /// pkcs7-mime with smime-type signed-data.
    OpaqueSigned,
    /// pkcs7-mime with smime-type enveloped-data or authEnveloped-data.
    Enveloped,
    /// pkcs7-mime with another smime-type (certs-only, compressed-data...).
    OtherPkcs7,
    /// pkcs7-mime without smime-type, named `.p7m`: signed or enveloped.
    UntypedP7m,
    /// pkcs7-mime without smime-type or a `.p7m` name.
    UntypedPkcs7,
}

impl SmimeKind {
    /// Enveloped, or (untyped `.p7m`) possibly enveloped.
    pub fn may_be_enveloped(self) -> bool {
        matches!(self, SmimeKind::Enveloped | SmimeKind::UntypedP7m)
    }

    pub fn is_pkcs7_mime(self) -> bool {
        matches!(
            self,
            SmimeKind::OpaqueSigned
                | SmimeKind::Enveloped
                | SmimeKind::OtherPkcs7
                | SmimeKind::UntypedP7m
                | SmimeKind::UntypedPkcs7
        )
    }
}

impl ContentType {
    pub fn smime_kind(&self) -> SmimeKind {
        match self.mime_type.as_str() {
            "multipart/signed" => match self.param("protocol").map(str::to_ascii_lowercase) {
                Some(p)
                    if p == "application/pkcs7-signature"
                        || p == "application/x-pkcs7-signature" =>
                {
                    SmimeKind::ClearSigned
                }
                Some(p) if p.contains("pgp") => SmimeKind::PgpSigned,
                _ => SmimeKind::OtherSigned,
            },
            "application/pkcs7-mime" | "application/x-pkcs7-mime" => {
                match self.param("smime-type").map(str::to_ascii_lowercase) {
                    Some(t) if t == "signed-data" => SmimeKind::OpaqueSigned,
                    Some(t) if t == "enveloped-data" || t == "authenveloped-data" => {
                        SmimeKind::Enveloped
                    }
                    Some(_) => SmimeKind::OtherPkcs7,
                    None if self.has_p7m_name() => SmimeKind::UntypedP7m,
                    None => SmimeKind::UntypedPkcs7,
                }
            }
            _ => SmimeKind::NotSmime,
        }
    }

    /// A `name` parameter ending in `.p7m`.
    pub fn has_p7m_name(&self) -> bool {
        self.param("name")
            .is_some_and(|n| n.to_ascii_lowercase().ends_with(".p7m"))
    }

    /// Parses a value; `None` when there is no `type/subtype` at its start.
    pub fn parse(value: &str) -> Option<ContentType> {
        let mut p = ParamParser {
            s: value.as_bytes(),
            i: 0,
        };
        p.skip_cfws();
        let t = p.token();
        p.skip_cfws();
        if !p.eat(b'/') {
            return None;
        }
        p.skip_cfws();
        let st = p.token();
        if t.is_empty() || st.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            p.skip_cfws();
            if p.i >= p.s.len() {
                break;
            }
            if !p.eat(b';') {
                // Junk: skip to the next ';'.
                while p.i < p.s.len() && p.s[p.i] != b';' {
                    p.i += 1;
                }
                continue;
            }
            p.skip_cfws();
            let name = p.token().to_ascii_lowercase();
            p.skip_cfws();
            if name.is_empty() || !p.eat(b'=') {
                continue;
            }
            p.skip_cfws();
            let val = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.lenient_value()
            };
            params.push((name, val));
        }
        Some(ContentType {
            mime_type: format!("{}/{}", t.to_ascii_lowercase(), st.to_ascii_lowercase()),
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_multipart(&self) -> bool {
        self.mime_type.starts_with("multipart/")
    }

    pub fn is_text(&self) -> bool {
        self.mime_type.starts_with("text/")
    }

    pub fn is_message(&self) -> bool {
        self.mime_type == "message/rfc822" || self.mime_type == "message/global"
    }
}

struct ParamParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl ParamParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn skip_cfws(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.i += 1,
                Some(b'(') => {
                    let mut depth = 0usize;
                    while let Some(c) = self.peek() {
                        self.i += 1;
                        match c {
                            b'\\' => self.i = (self.i + 1).min(self.s.len()),
                            b'(' => depth += 1,
                            b')' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => return,
            }
        }
    }
    /// RFC 2045 token characters.
    fn token(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c <= b' ' || c >= 0x7f || b"()<>@,;:\\\"/[]?=".contains(&c) {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    /// An unquoted parameter value. Real mail has values with tspecials
    /// (`protocol=application/x-pkcs7-signature`): read up to `;` or space.
    fn lenient_value(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c <= b' ' || c == b';' || c == b'(' {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                b'\r' | b'\n' => {}
                _ => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Whether a header field describes the MIME entity (`Content-*`). Compared
/// as bytes: a name may hold non-ASCII characters.
pub fn is_content_field(name: &str) -> bool {
    name.len() > 8 && name.as_bytes()[..8].eq_ignore_ascii_case(b"content-")
}

/// Whether a header value we emit is one field to every reader: no CR, no
/// NUL or other control character but tab, LF only as our folding (LF then
/// a tab or space, never a blank continuation line), no line over 998
/// octets (RFC 5322 §2.1.1, §2.2.3).
pub fn header_value_is_safe(value: &str) -> bool {
    header_value_is_one_field(value) && value.split('\n').all(|l| l.len() <= 998)
}

/// `header_value_is_safe` without the line length: one field to every
/// reader, whatever its length.
pub fn header_value_is_one_field(value: &str) -> bool {
    let b = value.as_bytes();
    if b.iter()
        .any(|&c| (c < b' ' && c != b'\t' && c != b'\n') || c == 0x7f)
    {
        return false;
    }
    value.split('\n').enumerate().all(|(i, line)| {
        i == 0 || (line.starts_with([' ', '\t']) && !line.trim_matches([' ', '\t']).is_empty())
    })
}

/// A field that a reader would find inside another field's value: after a
/// bare CR, or an LF not followed by white space, readers such as Python's
/// `email` start a new line, and a line `Name: ...` there is a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenField {
    /// Which field carries it (index into the header list).
    pub carrier: usize,
    pub name: String,
    pub value: String,
}

/// Every field hidden behind a bare CR or LF in these header values.
pub fn hidden_fields(headers: &[(String, String)]) -> Vec<HiddenField> {
    let mut out = Vec::new();
    for (i, (_, v)) in headers.iter().enumerate() {
        let b = v.as_bytes();
        if memchr::memchr2(b'\r', b'\n', b).is_none() {
            continue;
        }
        let mut start = 0;
        let mut pos = 0;
        let mut lines: Vec<&str> = Vec::new();
        while pos < b.len() {
            let c = b[pos];
            if c == b'\r' || c == b'\n' {
                lines.push(&v[start..pos]);
                pos += if c == b'\r' && b.get(pos + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = pos;
            } else {
                pos += 1;
            }
        }
        lines.push(&v[start..]);
        for line in lines.into_iter().skip(1) {
            if line.starts_with([' ', '\t']) {
                continue; // a continuation, as folding is
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim_end_matches([' ', '\t']);
                if !name.is_empty() && name.bytes().all(|c| c.is_ascii_graphic()) {
                    out.push(HiddenField {
                        carrier: i,
                        name: name.to_string(),
                        value: value.trim().to_string(),
                    });
                }
            }
        }
    }
    out
}

/// The value with every line break a reader could see that is not folding
/// (bare CR, LF without white space after it) and every other control
/// character but tab made a space: what hid a field is plain text then.
pub fn flatten_hidden_lines(value: &str) -> String {
    let b = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.char_indices() {
        let keep_fold = c == '\n' && matches!(b.get(i + 1), Some(b' ' | b'\t')) && {
            let rest = &value[i + 1..];
            let line = rest.split('\n').next().unwrap_or("");
            !line.trim_matches([' ', '\t', '\r']).is_empty()
        };
        if keep_fold || c == '\t' || !c.is_control() {
            out.push(c);
        } else if c == '\r' && b.get(i + 1) == Some(&b'\n') {
            // CRLF folding: keep the LF only.
        } else {
            out.push(' ');
        }
    }
    out
}

/// Why a Content-Type value can be read more than one way, for the layers
/// of a signed message that no signature covers (doc/inbound-verdicts.md
/// §3): a comment, a duplicate parameter, an RFC 2231 form of a parameter
/// that decides the structure, text that is not a parameter, a control
/// character, or an unquoted value with special characters.
pub fn content_type_ambiguity(value: &str) -> Option<&'static str> {
    const DECISIVE: [&str; 4] = ["boundary", "protocol", "smime-type", "micalg"];
    let s = value.as_bytes();
    if s.iter().any(|&c| c < b' ' && c != b'\t' || c == 0x7f) {
        return Some("control character in Content-Type");
    }
    if memchr_iter(b'(', s).any(|i| !in_quotes(s, i)) {
        return Some("comment in Content-Type");
    }
    let mut p = ParamParser { s, i: 0 };
    let is_ws = |c: u8| c == b' ' || c == b'\t';
    let skip_ws = |p: &mut ParamParser<'_>| {
        while p.peek().is_some_and(is_ws) {
            p.i += 1;
        }
    };
    skip_ws(&mut p);
    if p.token().is_empty() || !p.eat(b'/') || p.token().is_empty() {
        return Some("Content-Type without type/subtype");
    }
    let mut seen: Vec<String> = Vec::new();
    loop {
        skip_ws(&mut p);
        if p.i >= s.len() {
            return None;
        }
        if !p.eat(b';') {
            return Some("text in Content-Type that is not a parameter");
        }
        skip_ws(&mut p);
        if p.i >= s.len() {
            return None; // a trailing `;`
        }
        let name = p.token().to_ascii_lowercase();
        skip_ws(&mut p);
        if name.is_empty() || !p.eat(b'=') {
            return Some("text in Content-Type that is not a parameter");
        }
        skip_ws(&mut p);
        if p.peek() == Some(b'"') {
            let start = p.i;
            p.quoted();
            if s[p.i - 1] != b'"' || p.i - start < 2 {
                return Some("unterminated quoted string in Content-Type");
            }
        } else {
            let start = p.i;
            while p.peek().is_some_and(|c| c > b' ' && c != b';') {
                p.i += 1;
            }
            let v = &s[start..p.i];
            if v.is_empty()
                || !v
                    .iter()
                    .all(|&c| c < 0x7f && (c == b'/' || !b"()<>@,;:\\\"[]?=".contains(&c)))
            {
                return Some("unquoted parameter value with special characters");
            }
        }
        let base = name.split('*').next().unwrap_or("").to_string();
        if name.contains('*') && DECISIVE.contains(&base.as_str()) {
            return Some("RFC 2231 form of a structural parameter");
        }
        if seen.contains(&base) && (DECISIVE.contains(&base.as_str()) || !name.contains('*')) {
            return Some("duplicate Content-Type parameter");
        }
        seen.push(base);
    }
}

/// Whether byte `i` of a value lies inside a quoted string.
fn in_quotes(s: &[u8], i: usize) -> bool {
    let (mut q, mut esc) = (false, false);
    for &c in &s[..i] {
        if esc {
            esc = false;
        } else if c == b'\\' && q {
            esc = true;
        } else if c == b'"' {
            q = !q;
        }
    }
    q
}

/// Appends `input` to `out` with every line ending as CRLF.
pub fn push_crlf(out: &mut Vec<u8>, input: &[u8]) {
    push_crlf_scanned(out, input, &line_scan(input));
}

/// `push_crlf` for a text whose `line_scan` is at hand.
fn push_crlf_scanned(out: &mut Vec<u8>, input: &[u8], lines: &Lines) {
    // Mail from the MTA is CRLF already: one copy, no per-line work.
    if !lines.bare_lf {
        out.extend_from_slice(input);
        return;
    }
    out.reserve(input.len() + input.len() / 32);
    let mut start = 0;
    for nl in memchr_iter(b'\n', input) {
        if nl == 0 || input[nl - 1] != b'\r' {
            out.extend_from_slice(&input[start..nl]);
            out.extend_from_slice(b"\r\n");
            start = nl + 1;
        }
    }
    out.extend_from_slice(&input[start..]);
}

/// The line structure of a text, found in one pass.
#[derive(Debug, Default, PartialEq, Eq)]
struct Lines {
    /// A CR not followed by LF.
    bare_cr: bool,
    /// An LF not preceded by CR.
    bare_lf: bool,
    /// The longest line, without its line end.
    longest: usize,
    /// A line ending in a space or tab, or starting with `From `: relays
    /// strip the one and mbox writers escape the other (RFC 8551 §3.1.1).
    fragile: bool,
}

/// Whether one line (without its line end) is one a relay may change. Runs
/// once per line of every body we sign: the first byte guards the compare.
#[inline]
fn fragile_line(line: &[u8]) -> bool {
    matches!(line.last(), Some(b' ' | b'\t'))
        || (line.first() == Some(&b'F') && line.starts_with(b"From "))
}

/// Bit i set where `block[i]` is LF, and where it is CR. A per-line
/// `memchr` costs more than this on typical 76-character lines.
#[cfg(target_arch = "x86_64")]
fn line_end_masks(block: &[u8; 64]) -> (u64, u64) {
    use std::arch::x86_64::*;
    let (mut lf, mut cr) = (0u64, 0u64);
    // SAFETY: SSE2 is part of the x86_64 baseline; each unaligned load
    // reads 16 bytes inside the 64-byte block.
    unsafe {
        let (want_lf, want_cr) = (_mm_set1_epi8(b'\n' as i8), _mm_set1_epi8(b'\r' as i8));
        for i in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * i).cast());
            lf |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, want_lf)) as u16) << (16 * i);
            cr |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, want_cr)) as u16) << (16 * i);
        }
    }
    (lf, cr)
}

#[cfg(not(target_arch = "x86_64"))]
fn line_end_masks(block: &[u8; 64]) -> (u64, u64) {
    let (mut lf, mut cr) = (0u64, 0u64);
    for (i, &b) in block.iter().enumerate() {
        lf |= u64::from(b == b'\n') << i;
        cr |= u64::from(b == b'\r') << i;
    }
    (lf, cr)
}

fn line_scan(text: &[u8]) -> Lines {
    let mut r = Lines::default();
    let mut line_start = 0;
    let mut prev_cr = false;
    let mut base = 0;
    let mut blocks = text.chunks_exact(64);
    let mut on_block = |lf: u64, cr: u64, len: usize, base: usize, prev_cr: &mut bool| {
        if *prev_cr && lf & 1 == 0 {
            r.bare_cr = true;
        }
        // A CR whose next byte, in this block, is not LF (the block's last
        // byte is checked with the next block).
        let cr_inside = cr & !(1 << (len - 1));
        if cr_inside & !(lf >> 1) != 0 {
            r.bare_cr = true;
        }
        if lf & !((cr << 1) | u64::from(*prev_cr)) != 0 {
            r.bare_lf = true;
        }
        let mut m = lf;
        while m != 0 {
            let pos = base + m.trailing_zeros() as usize;
            let end = if pos > 0 && text[pos - 1] == b'\r' {
                pos - 1
            } else {
                pos
            };
            r.longest = r.longest.max(end.saturating_sub(line_start));
            r.fragile |= fragile_line(&text[line_start..end]);
            line_start = pos + 1;
            m &= m - 1;
        }
        *prev_cr = (cr >> (len - 1)) & 1 == 1;
    };
    for block in blocks.by_ref() {
        let block: &[u8; 64] = block.try_into().expect("64 bytes");
        let (lf, cr) = line_end_masks(block);
        if lf | cr != 0 || prev_cr {
            on_block(lf, cr, 64, base, &mut prev_cr);
        }
        base += 64;
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let mut padded = [0u8; 64];
        padded[..rest.len()].copy_from_slice(rest);
        let (lf, cr) = line_end_masks(&padded);
        on_block(lf, cr, rest.len(), base, &mut prev_cr);
    }
    if prev_cr {
        r.bare_cr = true;
    }
    r.longest = r.longest.max(text.len() - line_start);
    r.fragile |= fragile_line(&text[line_start..]);
    r
}

/// Whether a body could be changed by a relay unless it is re-encoded: 8-bit
/// bytes, NUL, a CR that does not start a line end, a line over the SMTP
/// limit of 998 octets, or a fragile line (trailing blank, `From `).
pub fn needs_7bit_encoding(body: &[u8]) -> bool {
    relay_safe_lines(body).is_none()
}

/// The line structure of a text a relay carries unchanged; None when it
/// needs re-encoding. Callers that copy the text next reuse the scan.
fn relay_safe_lines(text: &[u8]) -> Option<Lines> {
    seven_bit_lines(text).filter(|lines| !lines.fragile)
}

/// The line structure of a text that is valid 8bit data (RFC 2045 §2.8):
/// 8-bit bytes allowed, but no NUL, no bare CR and no line over 998.
fn eight_bit_lines(text: &[u8]) -> Option<Lines> {
    if memchr(0, text).is_some() {
        return None;
    }
    let lines = line_scan(text);
    (!lines.bare_cr && lines.longest <= 998).then_some(lines)
}

/// The transfer encoding an entity written by `write_canonical` is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    SevenBit,
    /// An attached message with 8-bit data, kept byte for byte: the
    /// entities around it are labelled 8bit.
    EightBit,
}

/// Writes an entity (header block and body) to `out` in canonical form: CRLF
/// line ends, and every leaf a relay could change (8-bit or binary data,
/// trailing blanks, `From ` lines) re-encoded to quoted-printable or
/// base64. Multiparts are walked into, up to `limits.max_depth` levels.
/// What must keep its bytes is kept: an attached message (RFC 2046 §5.2.1
/// allows it no other encoding than 7bit, 8bit or binary; only one that is
/// not even valid 8bit is base64 encoded as a whole) and a signed or
/// encrypted multipart (re-encoding would break its own signature). Header
/// lines we write lose their trailing blanks.
pub fn write_canonical(
    header_block: &[u8],
    body: &[u8],
    depth: usize,
    limits: Limits,
    out: &mut Vec<u8>,
) -> Result<Transfer, MimeError> {
    let mut labels = Vec::new();
    let t = write_entity(header_block, body, depth, limits, false, out, &mut labels)?;
    insert_eight_bit_labels(out, labels);
    Ok(t)
}

/// The label an entity around 8-bit data gets.
const EIGHT_BIT_LABEL: &[u8] = b"Content-Transfer-Encoding: 8bit\r\n";

/// Inserts the 8bit labels of multiparts that hold 8-bit data, all in one
/// copy (inserting each as found would copy the rest once per level).
fn insert_eight_bit_labels(out: &mut Vec<u8>, mut at: Vec<usize>) {
    if at.is_empty() {
        return;
    }
    at.sort_unstable();
    let mut labelled = Vec::with_capacity(out.len() + at.len() * EIGHT_BIT_LABEL.len());
    let mut from = 0;
    for p in at {
        labelled.extend_from_slice(&out[from..p]);
        labelled.extend_from_slice(EIGHT_BIT_LABEL);
        from = p;
    }
    labelled.extend_from_slice(&out[from..]);
    *out = labelled;
}

/// `write_canonical` of one entity; the positions of 8bit labels still to
/// insert go to `labels`. `in_digest`: a part of multipart/digest, whose
/// default type is message/rfc822 (RFC 2046 §5.1.5).
fn write_entity(
    header_block: &[u8],
    body: &[u8],
    depth: usize,
    limits: Limits,
    in_digest: bool,
    out: &mut Vec<u8>,
    labels: &mut Vec<usize>,
) -> Result<Transfer, MimeError> {
    if depth > limits.max_depth {
        return Err(MimeError::TooDeep(limits.max_depth));
    }
    if let Some(lines) = relay_safe_lines(body) {
        write_as_it_came(out, header_block, body, &lines);
        return Ok(Transfer::SevenBit);
    }
    let (start, labelled) = (out.len(), labels.len());
    match walk(header_block, body, depth, limits, in_digest, out, labels) {
        // A body whose only fault is fragile lines was copied as it came
        // before we mended such lines: where mending cannot walk it (an
        // encoding a composite may not have, a boundary not found, ...), it
        // still is, rather than left unsigned.
        Err(e) => match seven_bit_lines(body) {
            Some(lines) => {
                out.truncate(start);
                labels.truncate(labelled);
                write_as_it_came(out, header_block, body, &lines);
                Ok(Transfer::SevenBit)
            }
            None => Err(e),
        },
        ok => ok,
    }
}

/// 7bit data (RFC 2045 §2.7) that may have fragile lines.
fn seven_bit_lines(text: &[u8]) -> Option<Lines> {
    if !text.is_ascii() {
        return None;
    }
    eight_bit_lines(text)
}

fn write_as_it_came(out: &mut Vec<u8>, header_block: &[u8], body: &[u8], lines: &Lines) {
    push_header_block(out, header_block);
    out.extend_from_slice(b"\r\n");
    push_crlf_scanned(out, body, lines);
}

fn walk(
    header_block: &[u8],
    body: &[u8],
    depth: usize,
    limits: Limits,
    in_digest: bool,
    out: &mut Vec<u8>,
    labels: &mut Vec<usize>,
) -> Result<Transfer, MimeError> {
    let fields = parse_fields(header_block);
    let default_type = if in_digest {
        "message/rfc822"
    } else {
        "text/plain"
    };
    let ct = field_value(&fields, "Content-Type")
        .and_then(|v| ContentType::parse(&v))
        .unwrap_or_else(|| ContentType {
            mime_type: default_type.into(),
            params: vec![],
        });
    let cte = field_value(&fields, "Content-Transfer-Encoding")
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_else(|| "7bit".into());
    let identity = matches!(cte.as_str(), "7bit" | "8bit" | "binary");
    let protected = matches!(
        ct.mime_type.as_str(),
        "multipart/signed" | "multipart/encrypted"
    );

    if ct.is_message() || protected {
        if !identity {
            return Err(MimeError::EncodedComposite(cte));
        }
        if let Some(t) = write_kept(header_block, &fields, body, ct.is_message(), out) {
            return Ok(t);
        }
    }
    if ct.mime_type.starts_with("message/") && !ct.is_message() {
        // delivery-status and the like: short text, kept when it is 7bit.
        if let Some(lines) = seven_bit_lines(body) {
            write_as_it_came(out, header_block, body, &lines);
            return Ok(Transfer::SevenBit);
        }
    }
    if ct.is_multipart() {
        if !identity {
            return Err(MimeError::EncodedComposite(cte));
        }
        let boundary = ct
            .param("boundary")
            .filter(|b| !b.is_empty())
            .ok_or(MimeError::NoBoundary)?;
        let mp = split_multipart(body, boundary)?;
        if mp.parts.len() > limits.max_parts {
            return Err(MimeError::TooManyParts(limits.max_parts));
        }
        let digest = ct.mime_type == "multipart/digest";
        // Once the parts are encoded this entity is 7bit, which is what no
        // Content-Transfer-Encoding field means; 8-bit data kept inside
        // makes it 8bit, labelled once the parts are written.
        write_fields_except(out, &fields, "Content-Transfer-Encoding");
        let label_at = out.len();
        out.extend_from_slice(b"\r\n");
        // Preamble and epilogue are not shown to anyone; drop them rather than
        // sign bytes a relay may alter.
        if let Some(lines) = relay_safe_lines(mp.preamble) {
            push_crlf_scanned(out, mp.preamble, &lines);
        }
        let mut transfer = Transfer::SevenBit;
        for part in &mp.parts {
            out.extend_from_slice(b"\r\n--");
            out.extend_from_slice(boundary.as_bytes());
            out.extend_from_slice(b"\r\n");
            let (h, b) = split_entity(part);
            if write_entity(h, b, depth + 1, limits, digest, out, labels)? == Transfer::EightBit {
                transfer = Transfer::EightBit;
            }
        }
        out.extend_from_slice(b"\r\n--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"--\r\n");
        if let Some(lines) = relay_safe_lines(mp.epilogue) {
            push_crlf_scanned(out, mp.epilogue, &lines);
        }
        if transfer == Transfer::EightBit {
            labels.push(label_at);
        }
        return Ok(transfer);
    }

    if identity {
        write_fields_except(out, &fields, "Content-Transfer-Encoding");
        encode_leaf(body, ct.is_text(), out);
        return Ok(Transfer::SevenBit);
    }
    // Encoded already, yet a relay could change it (fragile lines, 8-bit
    // bytes, long lines): encoded anew to what it decodes to.
    let quoted_printable = match cte.as_str() {
        "quoted-printable" => true,
        "base64" => false,
        _ => return Err(MimeError::EightBitInEncoded(cte)),
    };
    write_fields_except(out, &fields, "Content-Transfer-Encoding");
    if quoted_printable {
        out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        encoding::push_requoted(out, body);
    } else {
        out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        encoding::push_rewrapped_base64(out, body);
    }
    Ok(Transfer::SevenBit)
}

/// An entity that must keep its bytes: 7bit or 8bit data as it came, only
/// the label made true. Not even valid 8bit: an attached message is base64
/// encoded as a whole (`may_encode`), the one way to carry it without
/// changing its bytes; anything else gives `None` (to be walked into).
fn write_kept(
    header_block: &[u8],
    fields: &[Field<'_>],
    body: &[u8],
    may_encode: bool,
    out: &mut Vec<u8>,
) -> Option<Transfer> {
    if let Some(lines) = seven_bit_lines(body) {
        // Fragile lines in it stay: its bytes are the point.
        write_as_it_came(out, header_block, body, &lines);
        return Some(Transfer::SevenBit);
    }
    if let Some(lines) = eight_bit_lines(body) {
        write_fields_except(out, fields, "Content-Transfer-Encoding");
        out.extend_from_slice(EIGHT_BIT_LABEL);
        out.extend_from_slice(b"\r\n");
        push_crlf_scanned(out, body, &lines);
        return Some(Transfer::EightBit);
    }
    if !may_encode {
        return None;
    }
    write_fields_except(out, fields, "Content-Transfer-Encoding");
    out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
    encoding::push_base64_lines(out, body);
    Some(Transfer::SevenBit)
}

/// A header block with CRLF line ends and no blank before a line end
/// (unfolded, the value reads the same).
fn push_header_block(out: &mut Vec<u8>, block: &[u8]) {
    for line in block.split_inclusive(|&b| b == b'\n') {
        let content = line.trim_ascii_end();
        // A fold of blanks only would become an empty line, which ends a
        // header: it goes (unfolded, nothing changes).
        if content.is_empty() {
            continue;
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
}

fn write_fields_except(out: &mut Vec<u8>, fields: &[Field<'_>], except: &str) {
    for f in fields
        .iter()
        .filter(|f| !f.name.eq_ignore_ascii_case(except))
    {
        push_header_block(out, f.raw);
    }
}

/// Writes `Content-Transfer-Encoding: ...`, the empty line and the encoded
/// body: quoted-printable for text unless base64 is shorter, base64 for
/// anything else.
fn encode_leaf(body: &[u8], is_text: bool, out: &mut Vec<u8>) {
    if is_text && encoding::quoted_printable_is_shorter(body) {
        out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        encoding::push_quoted_printable(out, body);
        return;
    }
    out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
    if is_text && line_scan(body).bare_lf {
        // Text is encoded in its canonical form, CRLF line ends.
        let mut canonical = Vec::with_capacity(body.len() + body.len() / 32);
        push_crlf(&mut canonical, body);
        encoding::push_base64_lines(out, &canonical);
    } else {
        encoding::push_base64_lines(out, body);
    }
}

/// A multipart body split at its delimiter lines.
#[derive(Debug)]
pub struct Multipart<'a> {
    pub preamble: &'a [u8],
    /// Each part without the CRLF that precedes the next delimiter.
    pub parts: Vec<&'a [u8]>,
    pub epilogue: &'a [u8],
    /// Whether the close delimiter (`--boundary--`) was found.
    pub closed: bool,
}

/// Splits a multipart body (RFC 2046 §5.1.1). A missing close delimiter is
/// tolerated (the last part runs to the end); no delimiter at all is an error.
pub fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Multipart<'a>, MimeError> {
    let mut dash = Vec::with_capacity(boundary.len() + 2);
    dash.extend_from_slice(b"--");
    dash.extend_from_slice(boundary.as_bytes());
    let finder = memmem::Finder::new(&dash);

    // Delimiter lines: `--boundary` at a line start, then `--` or transport
    // padding and the line end.
    let mut delims: Vec<(usize, usize, usize, bool)> = Vec::new(); // (line start incl. CRLF before, line start, after line, is_close)
    for pos in finder.find_iter(body) {
        let at_line_start = pos == 0 || body[pos - 1] == b'\n';
        if !at_line_start {
            continue;
        }
        let after = pos + dash.len();
        let rest = &body[after..];
        let is_close = rest.starts_with(b"--");
        let tail_from = if is_close { 2 } else { 0 };
        let line_end = memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        if !rest[tail_from..line_end]
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            continue; // `--boundaryX`: a longer boundary, not ours.
        }
        let before = if pos >= 2 && &body[pos - 2..pos] == b"\r\n" {
            pos - 2
        } else {
            pos.saturating_sub(1)
        };
        // Two delimiter lines in a row: an empty part, not a negative one.
        let before = before.max(delims.last().map_or(0, |d| d.2));
        delims.push((before, pos, after + line_end, is_close));
        if is_close {
            break;
        }
    }
    if delims.is_empty() {
        return Err(MimeError::BoundaryNotFound(boundary.to_string()));
    }
    let preamble = &body[..delims[0].0];
    let mut parts = Vec::with_capacity(delims.len());
    for w in delims.windows(2) {
        parts.push(&body[w[0].2..w[1].0]);
    }
    let last = delims[delims.len() - 1];
    let (closed, epilogue) = if last.3 {
        (true, &body[last.2..])
    } else {
        parts.push(&body[last.2..]);
        (false, &body[body.len()..])
    };
    Ok(Multipart {
        preamble,
        parts,
        epilogue,
        closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_depth: 32,
        max_parts: 100,
    };

    #[test]
    fn header_values_we_emit_are_one_field() {
        assert!(header_value_is_safe("mx; smime=pass\n body.smime-part=1"));
        assert!(header_value_is_safe("a\tb"));
        for bad in [
            "a\rb", "a\nb", "a\n \nb", "a\n ", "a\0b", "a\r\n b", "\u{7f}",
        ] {
            assert!(!header_value_is_safe(bad), "{bad:?}");
        }
        assert!(!header_value_is_safe(&"x".repeat(999)));
        assert!(header_value_is_one_field(&"x".repeat(999)));
    }

    #[test]
    fn fields_hidden_behind_a_bare_cr_are_found() {
        let h = |v: &str| vec![("Subject".to_string(), v.to_string())];
        let found = hidden_fields(&h("hi\rAuthentication-Results : mx; smime=pass"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "Authentication-Results");
        assert_eq!(found[0].value, "mx; smime=pass");
        assert_eq!(
            hidden_fields(&h("hi\nFrom: ceo@bank.example"))[0].name,
            "From"
        );
        // Folding is not a new line.
        assert!(hidden_fields(&h("hi\r\n\tFrom: x")).is_empty());
        assert!(hidden_fields(&h("hi\n From: x")).is_empty());
        assert!(hidden_fields(&h("plain")).is_empty());
        assert_eq!(
            flatten_hidden_lines("hi\rA-R: x\r\n\tmore\0"),
            "hi A-R: x\n\tmore "
        );
        assert!(header_value_is_one_field(&flatten_hidden_lines(
            "a\r\rb\n\nc\n \n"
        )));
    }

    #[test]
    fn content_without_header_is_all_body() {
        assert_eq!(
            entity_parts(b"Hello\r\nworld\r\n"),
            (&b""[..], &b"Hello\r\nworld\r\n"[..])
        );
        assert_eq!(
            entity_parts(b"Content-Type: text/plain\r\n\r\nHello\r\n"),
            (&b"Content-Type: text/plain\r\n"[..], &b"Hello\r\n"[..])
        );
        assert_eq!(entity_parts(b"\r\nHello"), (&b""[..], &b"Hello"[..]));
    }

    #[test]
    fn obsolete_space_before_the_colon_is_a_field() {
        let f = parse_fields(b"Subject : hi\r\nX-A\t: b\r\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "Subject");
        assert_eq!(f[1].name, "X-A");
        assert_eq!(f[0].unfolded(), "hi");
    }

    #[test]
    fn crlf_canonical_form() {
        let mut out = Vec::new();
        push_crlf(&mut out, b"a\nb\r\nc\n\nd");
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\nd");
    }

    #[test]
    fn content_fields_by_name_whatever_the_characters() {
        assert!(is_content_field("Content-Type"));
        assert!(is_content_field("CONTENT-transfer-encoding"));
        assert!(!is_content_field("Content-"));
        // Found by fuzzing: a multi-byte character across byte 8 (the MTA's
        // invalid UTF-8, read as U+FFFD) panicked a string slice.
        assert!(!is_content_field("Conten\u{FFFD}\u{FFFD}"));
        assert!(!is_content_field("X-\u{e9}\u{e9}\u{e9}\u{e9}x"));
    }

    #[test]
    fn detects_what_a_relay_could_change() {
        assert!(!needs_7bit_encoding(b"plain text\r\nline two\r\n"));
        assert!(needs_7bit_encoding("Grüße\r\n".as_bytes()));
        assert!(needs_7bit_encoding(b"nul\0byte\r\n"));
        assert!(needs_7bit_encoding(b"bare\rcr\r\n"));
        assert!(needs_7bit_encoding(&[b'a'; 999]));
        assert!(!needs_7bit_encoding(&[b'a'; 998]));
        let mut long = vec![b'x'; 1000];
        long.extend_from_slice(b"\r\nshort\r\n");
        assert!(needs_7bit_encoding(&long));
    }

    /// The line facts read byte by byte, the obvious way.
    fn lines_slowly(t: &[u8]) -> Lines {
        let mut r = Lines::default();
        let segments: Vec<&[u8]> = t.split(|&b| b == b'\n').collect();
        for (i, line) in segments.iter().enumerate() {
            // Only a CR before an LF is a line end.
            let ended = i + 1 < segments.len();
            let line = match line.strip_suffix(b"\r") {
                Some(l) if ended => l,
                _ => line,
            };
            r.fragile |=
                line.ends_with(b" ") || line.ends_with(b"\t") || line.starts_with(b"From ");
        }
        let mut len = 0;
        for (i, &b) in t.iter().enumerate() {
            match b {
                b'\r' if t.get(i + 1) == Some(&b'\n') => {}
                b'\r' => {
                    r.bare_cr = true;
                    len += 1;
                }
                b'\n' => {
                    r.bare_lf |= i == 0 || t[i - 1] != b'\r';
                    r.longest = r.longest.max(len);
                    len = 0;
                }
                _ => len += 1,
            }
        }
        r.longest = r.longest.max(len);
        r
    }

    #[test]
    fn line_scan_agrees_with_a_byte_by_byte_reading() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let len = (next() % 300) as usize;
            // Mostly text with CRLF, sometimes bare CR or LF, at every
            // offset around the 64-byte blocks.
            let t: Vec<u8> = (0..len)
                .map(|_| match next() % 40 {
                    0 => b'\r',
                    1 => b'\n',
                    2..=5 if round % 2 == 0 => b'\r',
                    6..=9 if round % 2 == 0 => b'\n',
                    10 if round % 3 == 0 => b' ',
                    _ => b'a',
                })
                .collect();
            assert_eq!(
                line_scan(&t),
                lines_slowly(&t),
                "{:?}",
                String::from_utf8_lossy(&t)
            );
        }
        for t in [
            &b"From me\r\n"[..],
            b"a\r\nFrom me",
            b"a\r\nFrom",
            b"a \r\nb",
            b"a\t",
            b"a \r",
            b"x\nFrom y\n",
        ] {
            assert_eq!(
                line_scan(t),
                lines_slowly(t),
                "{:?}",
                String::from_utf8_lossy(t)
            );
        }
        assert!(line_scan(b"a\r\nFrom me\r\n").fragile);
        assert!(line_scan(b"a \r\nb\r\n").fragile);
        assert!(!line_scan(b"a\r\n From me\r\nFrom\r\n").fragile);
        let mut crlf = b"line\r\n".repeat(100);
        assert_eq!(line_scan(&crlf), lines_slowly(&crlf));
        crlf.extend_from_slice(&[b'x'; 1000]);
        assert_eq!(line_scan(&crlf).longest, 1000);
    }

    #[test]
    fn entity_split_and_fields() {
        let e = b"Content-Type: text/plain;\r\n charset=utf-8\r\nX-A: 1\r\n\r\nbody\r\n";
        let (h, b) = split_entity(e);
        assert_eq!(b, b"body\r\n");
        let f = parse_fields(h);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "Content-Type");
        assert_eq!(f[0].unfolded(), "text/plain; charset=utf-8");
        assert_eq!(field_value(&f, "x-a").as_deref(), Some("1"));
        let (h, b) = split_entity(b"\r\nno headers");
        assert!(h.is_empty());
        assert_eq!(b, b"no headers");
        let (h, b) = split_entity(b"A: 1\nB: 2\n\nlf body");
        assert_eq!(parse_fields(h).len(), 2);
        assert_eq!(b, b"lf body");
    }

    #[test]
    fn content_type_parameters() {
        let ct = ContentType::parse("Multipart/Mixed (c) ; Boundary=\"a b\\\"c\"; charset=UTF-8")
            .unwrap();
        assert_eq!(ct.mime_type, "multipart/mixed");
        assert_eq!(ct.param("boundary"), Some("a b\"c"));
        assert_eq!(ct.param("charset"), Some("UTF-8"));
        assert!(ct.is_multipart());
        let ct = ContentType::parse("text/plain; format=flowed; junk; x=y").unwrap();
        assert_eq!(ct.param("x"), Some("y"));
        let ct = ContentType::parse(
            "multipart/signed; protocol=application/x-pkcs7-signature; boundary=a=b",
        )
        .unwrap();
        assert_eq!(ct.param("protocol"), Some("application/x-pkcs7-signature"));
        assert_eq!(ct.param("boundary"), Some("a=b"));
        assert!(ContentType::parse("garbage").is_none());
        // An escape at the very end of a comment.
        assert!(ContentType::parse("text/plain; (\\").is_some());
        assert!(ContentType::parse("text/plain (\\").is_some());
        assert!(ContentType::parse("").is_none());
    }

    #[test]
    fn multipart_split() {
        let body = b"pre\r\n--b\r\nA: 1\r\n\r\none\r\n--b \r\n\r\ntwo\r\n--bb\r\nstill two\r\n--b--\r\nepi\r\n";
        let m = split_multipart(body, "b").unwrap();
        assert_eq!(m.preamble, b"pre");
        assert_eq!(
            m.parts,
            vec![
                &b"A: 1\r\n\r\none"[..],
                &b"\r\ntwo\r\n--bb\r\nstill two"[..]
            ]
        );
        assert_eq!(m.epilogue, b"epi\r\n");
        assert!(m.closed);
        let m = split_multipart(b"--b\nx\n", "b").unwrap();
        assert!(!m.closed);
        assert_eq!(m.parts, vec![&b"x\n"[..]]);
        assert_eq!(
            split_multipart(b"nothing here", "b").unwrap_err(),
            MimeError::BoundaryNotFound("b".into())
        );
        // Delimiters back to back give empty parts, not a panic.
        let m = split_multipart(b"--b\r\n--b\r\n--b--\r\n", "b").unwrap();
        assert_eq!(m.parts, vec![&b""[..], &b""[..]]);
        let m = split_multipart(b"--b\n--b--", "b").unwrap();
        assert_eq!(m.parts, vec![&b""[..]]);
    }

    fn seven(header: &[u8], body: &[u8]) -> Result<Vec<u8>, MimeError> {
        let mut out = Vec::new();
        write_canonical(header, body, 0, L, &mut out).map(|_| out)
    }

    #[test]
    fn seven_bit_entity_is_only_canonicalised() {
        let out = seven(b"Content-Type: text/plain\n", b"hello\nworld\n").unwrap();
        assert_eq!(out, b"Content-Type: text/plain\r\n\r\nhello\r\nworld\r\n");
    }

    #[test]
    fn eight_bit_text_becomes_quoted_printable() {
        let out = seven(
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
            "Grüße aus München, mit freundlichen Grüßen und vielen Dank\r\n".as_bytes(),
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"), "{s}");
        assert!(!s.contains("8bit"));
        assert!(s.contains("Gr=C3=BC=C3=9Fe aus M=C3=BCnchen"), "{s}");
        assert!(s.is_ascii());
    }

    #[test]
    fn binary_leaf_becomes_base64() {
        let body: Vec<u8> = (0..=255u8).collect();
        let out = seven(
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n",
            &body,
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("Content-Transfer-Encoding: base64\r\n\r\n"),
            "{s}"
        );
        let b64: String = s
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(openssl::base64::decode_block(&b64).unwrap(), body);
    }

    fn canonical(header: &[u8], body: &[u8]) -> (String, Transfer) {
        let mut out = Vec::new();
        let t = write_canonical(header, body, 0, L, &mut out).unwrap();
        (String::from_utf8_lossy(&out).into_owned(), t)
    }

    #[test]
    fn fragile_lines_are_protected() {
        // 7bit text with a trailing blank and a From line: quoted-printable.
        let (s, t) = canonical(
            b"Content-Type: text/plain\r\n",
            b"Hello \r\nFrom here on\r\nbye\r\n",
        );
        assert_eq!(t, Transfer::SevenBit);
        assert_eq!(s, "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHello=20\r\n=46rom here on\r\nbye\r\n");
        // Already quoted-printable: mended in place, same decoded text.
        let (s, _) = canonical(
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n",
            b"From here=20 \r\nok\r\n",
        );
        assert!(s.ends_with("\r\n\r\n=46rom here=20\r\nok\r\n"), "{s}");
        // Raw 8-bit inside quoted-printable: encoded anew, same decoded bytes.
        let (s, _) = canonical(
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            "Grüße \r\n".as_bytes(),
        );
        assert_eq!(
            s,
            "Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n"
        );
        // Header lines lose their trailing blanks, folds of blanks only go.
        let (s, _) = canonical(
            b"Content-Type: text/plain; \r\n \r\n\tcharset=us-ascii \r\n",
            b"From x\r\n",
        );
        assert!(
            s.starts_with("Content-Type: text/plain;\r\n\tcharset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"),
            "{s}"
        );
        // What mending cannot walk, with only fragile lines, stays as it
        // came (it was signed so before): a message/global in base64, a
        // boundary that is not there.
        for header in [
            &b"Content-Type: message/global\r\nContent-Transfer-Encoding: base64\r\n"[..],
            b"Content-Type: multipart/mixed; boundary=nothere\r\n",
        ] {
            let (s, t) = canonical(header, b"From me \r\n");
            assert_eq!(t, Transfer::SevenBit);
            assert!(s.ends_with("\r\n\r\nFrom me \r\n"), "{s}");
        }
        // Inner signatures keep their bytes.
        let signed = b"--s\r\nContent-Type: text/plain\r\n\r\nFrom me \r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\nsig\r\n--s--\r\n";
        let (s, _) = canonical(
            b"Content-Type: multipart/signed; boundary=s; protocol=\"application/pgp-signature\"\r\n",
            signed,
        );
        assert!(s.ends_with(std::str::from_utf8(signed).unwrap()), "{s}");
        // A digest's parts are messages by default: kept.
        let digest = b"--d\r\n\r\nSubject: one\r\n\r\nFrom me \r\n--d--\r\n";
        let (s, _) = canonical(b"Content-Type: multipart/digest; boundary=d\r\n", digest);
        assert!(s.contains("\r\nSubject: one\r\n\r\nFrom me \r\n"), "{s}");
    }

    #[test]
    fn attached_messages_keep_their_bytes() {
        let inner = "From: a@example.com\r\nSubject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÜber alles \r\n";
        let body = format!("--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--XX--\r\n");
        let (s, t) = canonical(
            b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n",
            body.as_bytes(),
        );
        assert_eq!(t, Transfer::EightBit);
        assert!(s.contains(&format!("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{inner}\r\n--XX--")), "{s}");
        assert!(s.starts_with("Content-Type: multipart/mixed; boundary=\"XX\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\r\n--XX\r\n"), "{s}");
        // Not even 8bit (a NUL, a bare CR): base64 as a whole.
        let binary = b"Subject: x\r\n\r\nnul\0 and bare\r cr\r\n";
        let (s, t) = canonical(b"Content-Type: message/rfc822\r\n", binary);
        assert_eq!(t, Transfer::SevenBit);
        let (h, b) = s.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            h,
            "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64"
        );
        let b64: String = b.split_whitespace().collect();
        assert_eq!(openssl::base64::decode_block(&b64).unwrap(), binary);
        // 7bit with fragile lines: kept as it is.
        let seven = b"Subject: x\r\n\r\nFrom me \r\n";
        let (s, t) = canonical(b"Content-Type: message/rfc822\r\n", seven);
        assert_eq!(t, Transfer::SevenBit);
        assert!(s.ends_with("\r\n\r\nSubject: x\r\n\r\nFrom me \r\n"), "{s}");
    }

    #[test]
    fn multipart_with_8bit_part_is_rewritten_part_by_part() {
        let header = b"Content-Type: multipart/mixed; boundary=\"XX\"\r\nContent-Transfer-Encoding: 8bit\r\n";
        let body = "preamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nascii\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nüber\r\n--XX--\r\n".as_bytes();
        let s = String::from_utf8(seven(header, body).unwrap()).unwrap();
        assert!(s.starts_with("Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nascii\r\n--XX\r\n"), "{s}");
        assert!(s.contains("quoted-printable"), "{s}");
        assert!(s.ends_with("\r\n--XX--\r\n"), "{s}");
        assert!(s.is_ascii());
    }

    #[test]
    fn malformed_structures_give_errors() {
        let eight = "ü\r\n".as_bytes();
        assert_eq!(
            seven(b"Content-Type: multipart/mixed\r\n", eight).unwrap_err(),
            MimeError::NoBoundary
        );
        assert!(matches!(
            seven(b"Content-Type: multipart/mixed; boundary=q\r\n", eight),
            Err(MimeError::BoundaryNotFound(_))
        ));
        assert!(matches!(
            seven(
                b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n",
                eight
            ),
            Err(MimeError::EightBitInEncoded(_))
        ));
        // Base64 keeps its alphabet only: decoders ignore the rest.
        let out = seven(
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n",
            "aGk=ü\r\n".as_bytes(),
        )
        .unwrap();
        assert!(out.ends_with(b"\r\n\r\naGk=\r\n"));
    }

    #[test]
    fn nesting_is_bounded() {
        let depth = 100;
        let mut body = "ü\r\n".to_string();
        for i in (0..depth).rev() {
            body = format!(
                "--b{i}\r\nContent-Type: {}\r\n\r\n{body}\r\n--b{i}--\r\n",
                if i + 1 == depth {
                    "text/plain".to_string()
                } else {
                    format!("multipart/mixed; boundary=b{}", i + 1)
                }
            );
        }
        let err = seven(
            b"Content-Type: multipart/mixed; boundary=b0\r\n",
            body.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err, MimeError::TooDeep(32));
    }

    #[test]
    fn part_count_is_bounded() {
        let mut body = String::new();
        for i in 0..150 {
            body.push_str(&format!(
                "--b\r\nContent-Type: text/plain\r\n\r\n{i} \u{fc}\r\n"
            ));
        }
        body.push_str("--b--\r\n");
        let err = seven(
            b"Content-Type: multipart/mixed; boundary=b\r\n",
            body.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err, MimeError::TooManyParts(100));
    }
}
