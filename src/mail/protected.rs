//! Header protection (RFC 9788): the header fields of a message copied into
//! its cryptographic payload, marked `hp="clear"` (signed) or `hp="cipher"`
//! (encrypted); for an encrypted message, what its Header Confidentiality
//! Policy shows outside, recorded inside as `HP-Outer`, and the Legacy
//! Display Element that shows clients without header protection what was
//! hidden. And the same read back from a verified or decrypted payload.

use super::address::{self, FromIdentity};
use super::mime::{self, ContentType, Field};

/// The obscured Subject of `hcp_baseline` and `hcp_minimal` (RFC 9788 §3.2).
pub const OBSCURED_SUBJECT: &str = "[...]";

/// What the payload says of itself: signed only, or encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hp {
    Clear,
    Cipher,
}

impl Hp {
    pub fn as_str(self) -> &'static str {
        match self {
            Hp::Clear => "clear",
            Hp::Cipher => "cipher",
        }
    }
}

/// Header Confidentiality Policies (RFC 9788 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Policy {
    /// Subject becomes `[...]`; Keywords and Comments are removed.
    #[serde(rename = "hcp_baseline")]
    Baseline,
    /// Subject becomes `[...]`.
    #[serde(rename = "hcp_minimal")]
    Minimal,
    /// Nothing is hidden (the fields are still signed and encrypted inside).
    #[serde(rename = "hcp_no_confidentiality")]
    NoConfidentiality,
}

impl Policy {
    /// The value shown outside: the same, another, or none (removed).
    pub fn outer_value<'a>(self, name: &str, value: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        let hides = |names: &[&str]| names.iter().any(|n| name.eq_ignore_ascii_case(n));
        match self {
            Policy::NoConfidentiality => Some(value.into()),
            _ if hides(&["Subject"]) => Some(OBSCURED_SUBJECT.into()),
            Policy::Baseline if hides(&["Keywords", "Comments"]) => None,
            _ => Some(value.into()),
        }
    }
}

/// Fields a reader is shown, which the Legacy Display Element repeats when
/// a policy hides them (RFC 9788 §1.1.2, "user-facing").
const USER_FACING: [&str; 6] = ["Subject", "From", "To", "Cc", "Date", "Reply-To"];

/// Whether a field of the message is copied into the payload. Not: what
/// MIME uses to describe the entity, what transport and the MTAs add
/// (trace, authentication results, signatures of the outer message), Bcc
/// (the payload goes to every recipient, RFC 9788 §11.4), and our own.
pub fn is_protected(name: &str) -> bool {
    let n = name.trim_end().to_ascii_lowercase();
    !(mime::is_content_field(&n)
        || n == "mime-version"
        || n == "bcc"
        || n == "received"
        || n == "return-path"
        || n == "delivered-to"
        || n == "x-original-to"
        || n == "hp-outer"
        || n == "authentication-results"
        || n == "dkim-signature"
        || n == "x-smime-decrypted"
        || n.starts_with("arc-")
        || n.starts_with("resent-"))
}

/// Fields whose value is addresses (RFC 5322 §3.6.2, §3.6.3).
pub fn is_address_field(name: &str) -> bool {
    ["From", "Sender", "Reply-To", "To", "Cc", "Bcc"]
        .iter()
        .any(|n| mime::is_named(name, n))
}

/// How a value's lines are joined: CRLF in an entity we write, LF in a
/// value handed to the MTA (which writes its own line ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    Entity,
    Milter,
}

impl Fold {
    fn separator(self) -> &'static str {
        match self {
            Fold::Entity => "\r\n ",
            Fold::Milter => "\n ",
        }
    }
}

/// A header value as one field carries it: the sender's folding kept, but
/// no bare CR, no line that does not continue the field (a reader would
/// take it for a field of its own), no control character; text that is
/// not ASCII as RFC 2047 encoded words (UTF-8). Callers keep address
/// fields that are not ASCII out: an addr-spec may not be encoded.
pub fn field_value(value: &str, fold: Fold) -> String {
    let value = value.trim_start();
    if !value.is_ascii() {
        return encode_words(&mime::unfold(value), fold);
    }
    let mut out = String::with_capacity(value.len() + 8);
    let lines = value
        .split(['\n', '\r'])
        .map(|l| -> String {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect()
        })
        .filter(|l| !l.trim().is_empty());
    for (i, line) in lines.enumerate() {
        if i > 0 {
            out.push_str(&fold.separator()[..fold.separator().len() - 1]);
            if !line.starts_with([' ', '\t']) {
                out.push(' ');
            }
        }
        out.push_str(&line);
    }
    out
}

/// RFC 2047 `B` encoded words in UTF-8, each at most 75 characters, split
/// at character boundaries, folded onto lines of their own.
pub fn encode_words(text: &str, fold: Fold) -> String {
    use openssl::base64::encode_block;
    let mut out = String::new();
    let mut chunk = String::new();
    let flush = |chunk: &mut String, out: &mut String| {
        if chunk.is_empty() {
            return;
        }
        if !out.is_empty() {
            out.push_str(fold.separator());
        }
        out.push_str("=?utf-8?b?");
        out.push_str(&encode_block(chunk.as_bytes()));
        out.push_str("?=");
        chunk.clear();
    };
    for c in text.chars() {
        // 45 bytes become 60 base64 characters: 72 with the delimiters.
        if chunk.len() + c.len_utf8() > 45 {
            flush(&mut chunk, &mut out);
        }
        chunk.push(c);
    }
    flush(&mut chunk, &mut out);
    out
}

/// The header block of the cryptographic payload: the protected fields,
/// the `HP-Outer` records (encrypted only), then the entity's own
/// Content-* fields with `hp` added to its Content-Type (and the
/// `protected-headers="v1"` of the draft that came before, which some
/// clients still read).
pub fn payload_block(
    content_block: &[u8],
    protected: &[(String, String)],
    hp: Hp,
    outer: &[(String, String)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(content_block.len() + 512);
    for (name, value) in protected {
        push_field(&mut out, name, &field_value(value, Fold::Entity));
    }
    if hp == Hp::Cipher {
        for (name, value) in outer {
            push_field(
                &mut out,
                "HP-Outer",
                &format!("{}: {}", name.trim_end(), field_value(value, Fold::Entity)),
            );
        }
    }
    let param = format!("; hp=\"{}\"; protected-headers=\"v1\"", hp.as_str());
    let mut marked = false;
    for f in mime::parse_fields(content_block) {
        if !marked && mime::is_named(f.name, "Content-Type") {
            // Marks it came with (a message decrypted and sent on) are
            // replaced by ours: they say what this payload is now. The
            // field's bytes are kept as they are (a Latin-1 file name...)
            // when there is nothing to replace.
            let raw = f.raw.trim_ascii_end();
            let marked_before = ContentType::parse(&f.unfolded()).is_some_and(|ct| {
                ct.params
                    .iter()
                    .any(|(n, _)| n.split('*').next() == Some("hp") || n == "protected-headers")
            });
            match std::str::from_utf8(raw) {
                Ok(text) if marked_before => out.extend_from_slice(
                    without_params(text, &["hp", "protected-headers"]).as_bytes(),
                ),
                _ => out.extend_from_slice(raw.strip_suffix(b";").unwrap_or(raw).trim_ascii_end()),
            }
            out.extend_from_slice(param.as_bytes());
            out.extend_from_slice(b"\r\n");
            marked = true;
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    if !marked {
        out.extend_from_slice(format!("Content-Type: text/plain{param}\r\n").as_bytes());
    }
    out
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.trim_end().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The lines of the Legacy Display Element: each user-facing field whose
/// value the policy changed or removed, as its reader should have seen it.
pub fn legacy_display_lines(
    protected: &[(String, String)],
    outer: &[(String, String)],
) -> Vec<String> {
    protected
        .iter()
        .filter(|(n, _)| USER_FACING.iter().any(|u| mime::is_named(n, u)))
        .filter(|(n, v)| {
            !outer
                .iter()
                .any(|(o, ov)| mime::is_named(o, n) && mime::unfold(ov) == mime::unfold(v))
        })
        .map(|(n, v)| {
            let text: String = address::displayed_text(&mime::unfold(v))
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            format!("{}: {}", n.trim_end(), text)
        })
        .collect()
}

/// The main body parts (RFC 9788 §4.5.1) with the Legacy Display Element
/// in front of their text: a text/plain or text/html entity itself, each
/// text part of a multipart/alternative, the first part of any other
/// multipart, recursively. Each part changed is decoded (its encoding is
/// chosen again when the payload is written), marked
/// `hp-legacy-display="1"`, and moved to UTF-8 from US-ASCII if the lines
/// need it. A part in another charset, or nothing to put it in front of,
/// gives `None`: the payload then goes without one.
pub fn with_legacy_display(
    block: &[u8],
    body: &[u8],
    lines: &[String],
    depth: usize,
) -> Option<(Vec<u8>, Vec<u8>)> {
    if depth > 8 || lines.is_empty() {
        return None;
    }
    let fields = mime::parse_fields(block);
    let ct = match mime::field_value(&fields, "Content-Type") {
        None => ContentType {
            mime_type: "text/plain".into(),
            params: vec![],
        },
        // One we cannot read is left as it is.
        Some(v) => ContentType::parse(&v)?,
    };
    let cte = mime::field_value(&fields, "Content-Transfer-Encoding")
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_else(|| "7bit".into());
    let attachment = mime::field_value(&fields, "Content-Disposition").is_some_and(|d| {
        d.trim_start()
            .to_ascii_lowercase()
            .starts_with("attachment")
    });
    let html = ct.mime_type == "text/html";
    if ct.mime_type == "text/plain" || html {
        if attachment {
            return None;
        }
        let text = match cte.as_str() {
            "7bit" | "8bit" | "binary" => body.to_vec(),
            "quoted-printable" => super::encoding::decode_quoted_printable(body),
            "base64" => super::encoding::decode_base64(body),
            _ => return None,
        };
        let ascii_lines = lines.iter().all(|l| l.is_ascii());
        let charset = ct.param("charset").map(str::to_ascii_lowercase);
        // What the part becomes: the same charset, or UTF-8 where its text
        // is ASCII (a subset). Only where the lines can join the text as
        // they are: no relabelling of 8-bit text, no charset where ASCII
        // is not ASCII (UTF-16, UTF-7, EBCDIC...).
        let relabel = match charset.as_deref() {
            None | Some("us-ascii") | Some("ascii") if !ascii_lines => {
                if !text.is_ascii() {
                    return None;
                }
                true
            }
            None | Some("us-ascii") | Some("ascii") | Some("utf-8") | Some("utf8") => false,
            Some(c)
                if ascii_lines
                    && (c.starts_with("iso-8859-")
                        || c.starts_with("windows-125")
                        || c.starts_with("koi8-")) =>
            {
                false
            }
            Some(_) => return None,
        };
        let element = if html {
            let escaped: Vec<String> = lines.iter().map(|l| html_escape(l)).collect();
            format!(
                "<div class=\"header-protection-legacy-display\"><pre>{}</pre></div>\r\n",
                escaped.join("\r\n")
            )
        } else {
            format!("{}\r\n\r\n", lines.join("\r\n"))
        };
        let mut new_body = Vec::with_capacity(text.len() + element.len());
        if html {
            // After <body ...> when there is one, else first.
            let lower = text.to_ascii_lowercase();
            let at = memchr::memmem::find(&lower, b"<body")
                .and_then(|i| memchr::memchr(b'>', &lower[i..]).map(|j| i + j + 1))
                .unwrap_or(0);
            new_body.extend_from_slice(&text[..at]);
            new_body.extend_from_slice(element.as_bytes());
            new_body.extend_from_slice(&text[at..]);
        } else {
            new_body.extend_from_slice(element.as_bytes());
            new_body.extend_from_slice(&text);
        }
        // The part's own Content-Type, as written, marked; its charset
        // replaced by UTF-8 only where relabelled.
        let mut new_block = Vec::with_capacity(block.len() + 64);
        for f in &fields {
            if mime::is_named(f.name, "Content-Transfer-Encoding") {
                continue;
            }
            if !mime::is_named(f.name, "Content-Type") {
                new_block.extend_from_slice(f.raw);
                continue;
            }
            // A field that is not UTF-8 is not rewritten: no legacy display.
            let raw = std::str::from_utf8(f.raw.trim_ascii_end()).ok()?;
            let mut value = if relabel {
                without_params(raw, &["hp-legacy-display", "charset"])
            } else {
                without_params(raw, &["hp-legacy-display"])
            };
            if relabel {
                value.push_str("; charset=\"utf-8\"");
            }
            value.push_str("; hp-legacy-display=\"1\"\r\n");
            new_block.extend_from_slice(value.as_bytes());
        }
        if mime::field_value(&fields, "Content-Type").is_none() {
            let charset = if relabel { "; charset=\"utf-8\"" } else { "" };
            new_block.extend_from_slice(
                format!("Content-Type: text/plain{charset}; hp-legacy-display=\"1\"\r\n")
                    .as_bytes(),
            );
        }
        if !new_body.is_ascii() {
            new_block.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
        }
        return Some((new_block, new_body));
    }
    if !ct.is_multipart() || !matches!(cte.as_str(), "7bit" | "8bit" | "binary") {
        return None;
    }
    if matches!(
        ct.mime_type.as_str(),
        "multipart/signed" | "multipart/encrypted"
    ) {
        return None;
    }
    let boundary = ct.param("boundary").filter(|b| !b.is_empty())?;
    let mp = mime::split_multipart(body, boundary).ok()?;
    let alternative = ct.mime_type == "multipart/alternative";
    let mut changed = false;
    let mut new_body = Vec::with_capacity(body.len() + 512);
    new_body.extend_from_slice(mp.preamble);
    for (i, part) in mp.parts.iter().enumerate() {
        new_body.extend_from_slice(b"\r\n--");
        new_body.extend_from_slice(boundary.as_bytes());
        new_body.extend_from_slice(b"\r\n");
        let (h, b) = mime::split_entity(part);
        let main = alternative || i == 0;
        match main
            .then(|| with_legacy_display(h, b, lines, depth + 1))
            .flatten()
        {
            Some((nh, nb)) => {
                changed = true;
                new_body.extend_from_slice(&nh);
                new_body.extend_from_slice(b"\r\n");
                new_body.extend_from_slice(&nb);
            }
            None => new_body.extend_from_slice(part),
        }
    }
    new_body.extend_from_slice(b"\r\n--");
    new_body.extend_from_slice(boundary.as_bytes());
    new_body.extend_from_slice(b"--\r\n");
    new_body.extend_from_slice(mp.epilogue);
    changed.then(|| (block.to_vec(), new_body))
}

/// A Content-Type field (`Content-Type: type/sub; a=b; ...`) without the
/// parameters of these names (also their RFC 2231 forms `name*`,
/// `name*0`...), split at the `;`s outside quoted strings and comments,
/// and without a trailing `;`.
fn without_params(field: &str, names: &[&str]) -> String {
    let mut pieces: Vec<&str> = Vec::new();
    let (mut start, mut quoted, mut depth, mut escaped) = (0, false, 0usize, false);
    for (i, c) in field.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ';' if !quoted && depth == 0 => {
                pieces.push(&field[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&field[start..]);
    let mut out = pieces[0].trim_end().to_string();
    for p in &pieces[1..] {
        let name = p
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let base = name.split('*').next().unwrap_or("");
        if p.trim().is_empty() || names.iter().any(|n| n.eq_ignore_ascii_case(base)) {
            continue;
        }
        out.push(';');
        out.push_str(p.trim_end());
    }
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// What a payload's header section protects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protected {
    /// `hp`: `None` for the older `protected-headers="v1"` alone.
    pub hp: Option<Hp>,
    /// The protected fields, unfolded, in order.
    pub fields: Vec<(String, String)>,
    /// The `HP-Outer` records: what the composer left outside.
    pub outer: Vec<(String, String)>,
}

impl Protected {
    fn values(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| mime::is_named(n, name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn outer_values(&self, name: &str) -> Vec<&str> {
        self.outer
            .iter()
            .filter(|(n, _)| mime::is_named(n, name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The protected header section of a payload whose Content-Type says it
/// has one (`hp="clear"` or `"cipher"`, also in RFC 2231 form; or
/// `protected-headers="v1"`). An `hp` of another value is no header
/// protection (RFC 9788 §2.1.1).
pub fn read(ct: &ContentType, fields: &[Field<'_>]) -> Option<Protected> {
    let hp_value = ct
        .params
        .iter()
        .find(|(n, _)| n == "hp" || n.starts_with("hp*"))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    let hp = match hp_value.as_deref() {
        Some("clear") => Some(Hp::Clear),
        Some("cipher") => Some(Hp::Cipher),
        Some(_) => return None,
        None if ct.param("protected-headers").is_some() => None,
        None => return None,
    };
    let mut p = Protected {
        hp,
        ..Protected::default()
    };
    for f in fields {
        if mime::is_named(f.name, "HP-Outer") {
            let v = f.unfolded();
            if let Some((n, val)) = v.split_once(':') {
                let n = n.trim();
                if !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()) {
                    p.outer.push((n.to_string(), val.trim().to_string()));
                }
            }
        } else if is_protected(f.name) {
            p.fields.push((f.name.trim_end().to_string(), f.unfolded()));
        }
    }
    Some(p)
}

/// How the outer header section stands against the protected one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// The protected From is another mailbox than the outer one.
    pub from_differs: bool,
    /// User-facing fields whose outer value is not the protected one (for
    /// an encrypted payload: not what `HP-Outer` says the sender left out).
    pub differing: Vec<String>,
}

/// Compares the user-facing fields a payload protects with the outer ones.
/// `encrypted`: the payload came out of an encryption layer, so its
/// `HP-Outer` records say which outer values the sender chose to show.
pub fn compare(p: &Protected, outer: &[(String, String)], encrypted: bool) -> Comparison {
    let mut c = Comparison::default();
    let outer_values = |name: &str| -> Vec<String> {
        mime::values_named(outer, name)
            .map(|v| normalize(&mime::unfold(v)))
            .collect()
    };
    let inner_from = p.values("From");
    if !inner_from.is_empty() {
        let outer_from = outer_values("From");
        let mailbox = |v: &str| match address::from_identity(v) {
            FromIdentity::One(a) => Some(a.to_ascii_lowercase()),
            _ => None,
        };
        let same = inner_from.len() == 1
            && outer_from.len() == 1
            && matches!(
                (mailbox(inner_from[0]), mailbox(&outer_from[0])),
                (Some(a), Some(b)) if address::same_address(&a, &b)
            );
        if !same {
            c.from_differs = true;
        }
    }
    let cipher = encrypted && p.hp == Some(Hp::Cipher);
    for name in USER_FACING.iter().filter(|n| **n != "From") {
        let inner: Vec<String> = p.values(name).iter().map(|v| normalize(v)).collect();
        // An RFC 9788 payload carries every field its sender wrote: one
        // outside only (a Reply-To or Cc added on the way) differs too.
        // Not the Date, which an MTA may add; not the older form, which
        // protected only some fields.
        let added_outside = p.hp.is_some()
            && *name != "Date"
            && mime::values_named(outer, name).all(|v| v.is_ascii());
        if inner.is_empty() && !added_outside {
            continue;
        }
        let expected: Vec<String> = if cipher {
            p.outer_values(name).iter().map(|v| normalize(v)).collect()
        } else {
            inner
        };
        let shown = outer_values(name);
        if !same_text(&expected, &shown) {
            c.differing.push(name.to_string());
        }
    }
    c
}

fn same_text(a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || address::displayed_text(x) == address::displayed_text(y))
}

fn normalize(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Fields a gateway puts back on the outer header after decrypting, when
/// the policy hid them: the text a reader expects to see. Addresses and
/// dates are never rewritten from inside.
const RESTORED: [&str; 3] = ["Subject", "Keywords", "Comments"];

/// The outer fields to set from the protected ones after decryption, each
/// with its protected value (unfolded; the caller makes it one safe field).
pub fn to_restore(p: &Protected, outer: &[(String, String)]) -> Vec<(String, String)> {
    if p.hp != Some(Hp::Cipher) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in RESTORED {
        let inner = p.values(name);
        let [value] = inner.as_slice() else {
            continue;
        };
        let shown: Vec<String> = mime::values_named(outer, name)
            .map(|v| normalize(&mime::unfold(v)))
            .collect();
        if shown.len() > 1 || shown.first().map(String::as_str) != Some(&normalize(value)) {
            out.push((name.to_string(), value.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 9788 Appendix C.3.1.2: the payload of a signed and encrypted
    /// message under hcp_baseline, both layers off.
    const RFC_PAYLOAD: &str = include_str!("../../tests/data/rfc9788-c3.1.2-payload.eml");

    fn read_payload(text: &str) -> Protected {
        let (h, _) = mime::split_entity(text.as_bytes());
        let fields = mime::parse_fields(h);
        let ct = ContentType::parse(&mime::field_value(&fields, "Content-Type").unwrap()).unwrap();
        read(&ct, &fields).unwrap()
    }

    #[test]
    fn the_rfc_payload_reads_as_the_rfc_says() {
        let p = read_payload(RFC_PAYLOAD);
        assert_eq!(p.hp, Some(Hp::Cipher));
        assert_eq!(p.values("Subject"), vec!["smime-signed-enc-hp-baseline"]);
        assert_eq!(p.fields.len(), 6, "{p:?}");
        assert_eq!(p.outer.len(), 6);
        assert_eq!(p.outer_values("Subject"), vec!["[...]"]);
        // The outer header as the RFC's message has it.
        let outer = headers(&[
            ("Subject", "[...]"),
            ("Message-ID", "<smime-signed-enc-hp-baseline@example>"),
            ("From", "Alice <alice@smime.example>"),
            ("To", "Bob <bob@smime.example>"),
            ("Date", "Sat, 20 Feb 2021 10:09:02 -0500"),
        ]);
        assert_eq!(compare(&p, &outer, true), Comparison::default());
        assert_eq!(
            to_restore(&p, &outer),
            vec![("Subject".into(), "smime-signed-enc-hp-baseline".into())]
        );
        // An outer Subject changed in transit is not what the sender showed.
        let mut altered = outer.clone();
        altered[0].1 = "URGENT: wire money".into();
        assert_eq!(compare(&p, &altered, true).differing, vec!["Subject"]);
        // Another From outside.
        let mut other = outer.clone();
        other[2].1 = "Mallory <mallory@smime.example>".into();
        assert!(compare(&p, &other, true).from_differs);
        // Read as if it had not been encrypted, [...] differs.
        assert_eq!(compare(&p, &outer, false).differing, vec!["Subject"]);
    }

    #[test]
    fn unknown_hp_values_are_no_protection() {
        let ct = ContentType::parse("text/plain; hp=\"maybe\"").unwrap();
        assert!(read(&ct, &[]).is_none());
        let ct = ContentType::parse("text/plain; protected-headers=\"v1\"").unwrap();
        assert_eq!(read(&ct, &[]).unwrap().hp, None);
        let ct = ContentType::parse("text/plain").unwrap();
        assert!(read(&ct, &[]).is_none());
    }

    #[test]
    fn policies_hide_what_the_rfc_says() {
        let b = Policy::Baseline;
        assert_eq!(b.outer_value("subject", "Secret").as_deref(), Some("[...]"));
        assert_eq!(b.outer_value("Keywords", "x"), None);
        assert_eq!(b.outer_value("Comments", "x"), None);
        assert_eq!(b.outer_value("To", "bob@x").as_deref(), Some("bob@x"));
        assert_eq!(
            Policy::Minimal.outer_value("Keywords", "x").as_deref(),
            Some("x")
        );
        assert_eq!(
            Policy::NoConfidentiality
                .outer_value("Subject", "Secret")
                .as_deref(),
            Some("Secret")
        );
        assert!(!is_protected("Content-Type") && !is_protected("Received"));
        assert!(!is_protected("Bcc") && !is_protected("ARC-Seal"));
        assert!(is_protected("Subject") && is_protected("X-Mailer"));
    }

    #[test]
    fn the_payload_block_carries_fields_records_and_the_marks() {
        let block = payload_block(
            b"Content-Type: text/plain;\r\n charset=us-ascii\r\n",
            &headers(&[("Subject", "Gr\u{fc}\u{df}e"), ("From", "a@x")]),
            Hp::Cipher,
            &headers(&[("Subject", "[...]"), ("From", "a@x")]),
        );
        let text = String::from_utf8(block).unwrap();
        assert_eq!(
            text,
            "Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\nFrom: a@x\r\nHP-Outer: Subject: [...]\r\nHP-Outer: From: a@x\r\nContent-Type: text/plain;\r\n charset=us-ascii; hp=\"cipher\"; protected-headers=\"v1\"\r\n"
        );
        // Read back.
        let p = read_payload(&format!("{text}\r\nbody\r\n"));
        assert_eq!(p.values("Subject"), vec!["=?utf-8?b?R3LDvMOfZQ==?="]);
        assert_eq!(
            address::displayed_text(p.values("Subject")[0]),
            "Gr\u{fc}\u{df}e"
        );
    }

    #[test]
    fn the_legacy_display_goes_in_front_of_each_main_body_part() {
        let lines = vec!["Subject: Dinner plans".to_string()];
        let (h, b) = with_legacy_display(
            b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n",
            b"Let's meet at Rama's Roti Shop at 8pm and go to the park\r\nfrom there.=\r\n\r\n",
            &lines,
            0,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "Content-Type: text/plain; charset=us-ascii; hp-legacy-display=\"1\"\r\n"
        );
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "Subject: Dinner plans\r\n\r\nLet's meet at Rama's Roti Shop at 8pm and go to the park\r\nfrom there.\r\n"
        );
        // multipart/alternative: both renderings; HTML escaped, after <body>.
        let alt = b"--b\r\nContent-Type: text/plain\r\n\r\nHi\r\n--b\r\nContent-Type: text/html\r\n\r\n<html><body class=x><p>Hi</p></body></html>\r\n--b--\r\n";
        let lines = vec!["Subject: <x> & y \u{e9}".to_string()];
        let (_, b) = with_legacy_display(
            b"Content-Type: multipart/alternative; boundary=b\r\n",
            alt,
            &lines,
            0,
        )
        .unwrap();
        let text = String::from_utf8(b).unwrap();
        assert!(
            text.contains("Content-Type: text/plain; charset=\"utf-8\"; hp-legacy-display=\"1\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSubject: <x> & y \u{e9}\r\n\r\nHi"),
            "{text}"
        );
        assert!(
            text.contains("<body class=x><div class=\"header-protection-legacy-display\"><pre>Subject: &lt;x&gt; &amp; y \u{e9}</pre></div>"),
            "{text}"
        );
        // Text in a charset the lines cannot join: none.
        assert!(with_legacy_display(
            b"Content-Type: text/plain; charset=iso-8859-1\r\n",
            b"x",
            &lines,
            0
        )
        .is_none());
        // An attachment first: nothing to show it in.
        assert!(
            with_legacy_display(b"Content-Type: application/pdf\r\n", b"%PDF", &lines, 0).is_none()
        );
    }

    #[test]
    fn parameters_are_taken_out_by_name() {
        assert_eq!(
            without_params(
                "Content-Type: text/plain; name=\"charset.txt\"; x-orig-charset=a; charset=us-ascii;",
                &["charset"]
            ),
            "Content-Type: text/plain; name=\"charset.txt\"; x-orig-charset=a"
        );
        assert_eq!(
            without_params(
                "Content-Type: text/plain; hp=\"cipher\"; a=\"x;y\"; hp*=x; protected-headers=v1",
                &["hp", "protected-headers"]
            ),
            "Content-Type: text/plain; a=\"x;y\""
        );
        // A payload marked before (decrypted, sent on) gets our marks only.
        let block = payload_block(
            b"Content-Type: text/plain; hp=\"cipher\"\r\n",
            &[],
            Hp::Clear,
            &[],
        );
        assert_eq!(
            String::from_utf8(block).unwrap(),
            "Content-Type: text/plain; hp=\"clear\"; protected-headers=\"v1\"\r\n"
        );
        // A line of control characters is no line.
        assert_eq!(field_value("a\r\n\u{7}\r\n b", Fold::Entity), "a\r\n b");
    }

    #[test]
    fn legacy_lines_name_what_the_policy_hid() {
        let protected = headers(&[
            ("Subject", "Dinner plans"),
            ("From", "Alice <alice@example.net>"),
            ("Keywords", "food"),
        ]);
        let outer = headers(&[("Subject", "[...]"), ("From", "Alice <alice@example.net>")]);
        assert_eq!(
            legacy_display_lines(&protected, &outer),
            vec!["Subject: Dinner plans"]
        );
        assert_eq!(encode_words("abc", Fold::Entity), "=?utf-8?b?YWJj?=");
        assert!(encode_words(&"\u{e9}".repeat(40), Fold::Entity).contains("?=\r\n =?utf-8?b?"));
        // Handed to the MTA: LF folding, one safe field however long.
        let long = field_value(&"Quartalszahlen f\u{fc}r ".repeat(8), Fold::Milter);
        assert!(
            long.contains("?=\n =?utf-8?b?") && mime::header_value_is_safe(&long),
            "{long}"
        );
        // A bare CR or a line that starts no continuation cannot hide a field.
        assert_eq!(
            field_value("a\rFrom: x@y\nTo: z", Fold::Entity),
            "a\r\n From: x@y\r\n To: z"
        );
    }
}
