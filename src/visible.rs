//! The visible verdict (`[display]`, off by default): a tag in front of the
//! Subject of inbound mail and an info header, made from templates, since
//! mail readers show neither Authentication-Results nor where a header
//! came from. A sender's own copies are taken out first, as a reader would
//! read them (RFC 2047 encoded words decoded, any case, any spacing), so a
//! tag or info header on a delivered message is always the gateway's.

use crate::address;
use crate::config::Display;
use crate::mime;
use crate::outcome::HeaderOp;
use crate::verify::SmimeResult;

/// A template filled in. The signer is an address from a certificate that
/// passed; anything else in it is dropped rather than written.
pub fn fill(template: &str, result: &str, signer: Option<&str>) -> String {
    let signer: String = signer
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '"' | '\\'))
        .collect();
    template
        .replace("%{result}", result)
        .replace("%{signer}", &signer)
}

/// The template for a result, if one is configured.
pub fn tag_for(d: &Display, result: Option<SmimeResult>) -> Option<&str> {
    match result? {
        SmimeResult::Pass => d.tag_pass.as_deref(),
        SmimeResult::Fail | SmimeResult::Permerror => d.tag_fail.as_deref(),
        _ => d.tag_other.as_deref(),
    }
}

/// A template as a pattern: its literal pieces (lower case, blanks
/// collapsed) with a wildcard where each placeholder was.
fn pieces(template: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find("%{") {
        if i > 0 {
            out.push(Some(normalize(&rest[..i]).to_ascii_lowercase()));
        }
        out.push(None);
        rest = rest[i..].find('}').map_or("", |e| &rest[i + e + 1..]);
    }
    if !rest.is_empty() {
        out.push(Some(normalize(rest).to_ascii_lowercase()));
    }
    out.retain(|p| p.as_deref() != Some("") && p.as_deref() != Some(" "));
    out
}

fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = false;
    for c in s.chars() {
        if c.is_whitespace() {
            blank = true;
        } else {
            if blank && !out.is_empty() {
                out.push(' ');
            }
            blank = false;
            out.push(c);
        }
    }
    if blank && !out.is_empty() {
        out.push(' ');
    }
    out
}

/// Where `lit` matches `text` from `pos` on, blanks aside in both (a reader
/// takes `[S/MIME signed:x]` for `[S/MIME signed: x]`): the end.
fn literal_at(text: &[u8], pos: usize, lit: &[u8]) -> Option<usize> {
    let mut i = pos;
    for &c in lit.iter().filter(|&&c| c != b' ') {
        while text.get(i) == Some(&b' ') {
            i += 1;
        }
        if text.get(i) != Some(&c) {
            return None;
        }
        i += 1;
    }
    Some(i)
}

/// The first match of `lit` at or after `from`: its start and end.
fn literal_find(text: &[u8], from: usize, lit: &[u8]) -> Option<(usize, usize)> {
    (from..text.len())
        .filter(|&p| text[p] != b' ')
        .find_map(|p| literal_at(text, p, lit).map(|e| (p, e)))
}

/// The first place `pattern` matches `text` (whose ASCII letters are lower
/// case, blanks collapsed) at or after `from`: a placeholder matches the
/// shortest run before the next literal piece, or a run without blanks at
/// either end of the pattern.
fn find(text: &str, pattern: &[Option<String>], from: usize) -> Option<(usize, usize)> {
    let t = text.as_bytes();
    let first_lit = pattern.iter().position(Option::is_some)?;
    let lit0 = pattern[first_lit].as_deref()?.as_bytes();
    let mut search = from;
    while let Some((at, after)) = literal_find(t, search, lit0) {
        let mut start = at;
        if first_lit > 0 {
            // A placeholder in front: the word before it.
            start = t[..at]
                .iter()
                .rposition(|&b| b == b' ')
                .map_or(0, |i| i + 1)
                .max(from);
        }
        let mut pos = after;
        let mut ok = true;
        let mut wild = false;
        for p in &pattern[first_lit + 1..] {
            match p {
                None => wild = true,
                Some(lit) if wild => match literal_find(t, pos, lit.as_bytes()) {
                    Some((_, e)) => {
                        pos = e;
                        wild = false;
                    }
                    // Not after this start: not after a later one either.
                    None => return None,
                },
                Some(lit) => match literal_at(t, pos, lit.as_bytes()) {
                    Some(e) => pos = e,
                    None => {
                        ok = false;
                        break;
                    }
                },
            }
        }
        if ok {
            if wild {
                // A placeholder at the end: the word after.
                while pos < t.len() && t[pos] == b' ' {
                    pos += 1;
                }
                pos += t[pos..]
                    .iter()
                    .position(|&b| b == b' ')
                    .unwrap_or(t.len() - pos);
            }
            // Never inside a character (matches end on ASCII).
            while !text.is_char_boundary(pos) {
                pos += 1;
            }
            return Some((start, pos));
        }
        search = at + 1;
    }
    None
}

/// Characters readers do not show (zero-width, soft hyphen, direction
/// marks and overrides, word joiners, byte order mark): taken out before
/// matching, or `[S/MIME\u{200b} signed: ...]` would pass for another text.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fff8}' | '\u{e0000}'..='\u{e0fff}')
}

/// Subjects are matched up to this many characters: readers show less, and
/// matching stays bounded whatever a sender writes.
const MAX_MATCHED: usize = 4096;

/// The Subject as a reader shows it without any tag the templates make,
/// when it had one: `None` when there was nothing to take out. Every way a
/// reader may decode it is looked at; the first that shows a tag is the
/// text kept.
pub fn without_tags(subject: &str, templates: &[&str]) -> Option<String> {
    let patterns: Vec<Vec<Option<String>>> = templates.iter().map(|t| pieces(t)).collect();
    address::displayed_texts(&mime::unfold(subject))
        .into_iter()
        .find_map(|reading| strip(&decoded_again(reading), &patterns))
}

/// Some readers decode again what decoding produced: the text they show.
fn decoded_again(mut text: String) -> String {
    for _ in 0..2 {
        if !text.contains("=?") {
            break;
        }
        text = address::displayed_text(&text);
    }
    text
}

fn strip(reading: &str, patterns: &[Vec<Option<String>>]) -> Option<String> {
    // What a reader does not show is not there for the match either
    // (control characters go too: removed after matching, they could join
    // two harmless pieces into a tag).
    let visible: String = reading
        .chars()
        .filter(|c| !invisible(*c) && (!c.is_control() || c.is_whitespace()))
        .collect();
    let mut text: String = normalize(&visible).chars().take(MAX_MATCHED).collect();
    let mut removed = false;
    // Bounded: each round takes out at least one character.
    for _ in 0..64 {
        let lower = text.to_ascii_lowercase();
        let Some((s, e)) = patterns
            .iter()
            .filter_map(|p| find(&lower, p, 0))
            .min_by_key(|&(s, _)| s)
        else {
            break;
        };
        text.replace_range(s..e, " ");
        text = normalize(&text);
        removed = true;
    }
    removed.then(|| text.trim().to_string())
}

/// A header value for a Subject text: as it is when ASCII, else encoded.
pub fn subject_value(text: &str) -> String {
    // Decoded words may hold control characters: never into a header.
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    // Text that still reads as an encoded word is encoded, so that it
    // shows as the text it is.
    if text.is_ascii() && !text.contains("=?") {
        text
    } else {
        crate::protected::encode_words(&text, crate::protected::Fold::Milter)
    }
}

/// The Subject fields rewritten without the tags a sender wrote, and how
/// many had some. (Fields hidden behind a bare CR, and the info header,
/// are `inbound::plan`'s, with the other forged fields.)
pub fn subject_ops(d: &Display, headers: &[(String, String)]) -> (Vec<HeaderOp>, usize) {
    let templates: Vec<&str> = d.tags().collect();
    let mut ops = Vec::new();
    if templates.is_empty() {
        return (ops, 0);
    }
    for (index, value) in mime::values_named(headers, "Subject").enumerate() {
        if let Some(clean) = without_tags(value, &templates) {
            ops.push(HeaderOp::Change {
                name: "Subject".into(),
                index: index + 1,
                value: Some(subject_value(&clean)),
            });
        }
    }
    let n = ops.len();
    (ops, n)
}

/// The verdict made visible: the Subject with its tags (`decrypted` and
/// the result's) in front of `subject` (the clean text, or the protected
/// Subject a decryption restored), and the info header.
pub fn ops(
    d: &Display,
    headers: &[(String, String)],
    subject: Option<&str>,
    result: Option<SmimeResult>,
    signer: Option<&str>,
    decrypted: bool,
) -> Vec<HeaderOp> {
    let mut out = Vec::new();
    let result_word = result.map_or("none", |r| r.as_str());
    let mut tags = Vec::new();
    if decrypted {
        tags.extend(
            d.tag_decrypted
                .as_deref()
                .map(|t| fill(t, result_word, signer)),
        );
    }
    tags.extend(tag_for(d, result).map(|t| fill(t, result_word, signer)));
    if !tags.is_empty() {
        let templates: Vec<&str> = d.tags().collect();
        let current = subject
            .map(str::to_string)
            .or_else(|| {
                mime::values_named(headers, "Subject")
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let text = match without_tags(&current, &templates) {
            Some(clean) => subject_value(clean.trim()),
            // No tag in it: the value as it came (a restored one is made
            // safe already), behind ours.
            None if subject.is_some() => mime::unfold(&current),
            None => subject_value(&mime::unfold(&current)),
        };
        let mut value = tags.join(" ");
        if !text.is_empty() {
            if !value.is_empty() {
                value.push(' ');
            }
            value.push_str(&text);
        }
        out.push(HeaderOp::Change {
            name: "Subject".into(),
            index: 1,
            value: Some(value),
        });
    }
    if let Some((name, template)) = &d.info {
        out.push(HeaderOp::Insert {
            index: 0,
            name: name.clone(),
            value: fill(template, result_word, signer),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "[S/MIME signed: %{signer}]";
    const FAIL: &str = "[S/MIME: INVALID signature]";

    #[test]
    fn forged_tags_are_found_as_a_reader_reads_them() {
        let t = [PASS, FAIL];
        assert_eq!(
            without_tags("[S/MIME signed: ceo@example.com] Pay this", &t).as_deref(),
            Some("Pay this")
        );
        assert_eq!(
            without_tags("Re: [s/mime   SIGNED:ceo@x]  Pay", &t).as_deref(),
            Some("Re: Pay"),
            "blanks do not matter to a reader"
        );
        assert_eq!(
            without_tags("Re: [s/mime   SIGNED: ceo@x]  Pay", &t).as_deref(),
            Some("Re: Pay")
        );
        // In encoded words, split across two.
        assert_eq!(
            without_tags(
                "=?utf-8?q?=5BS/MIME_signed:_ceo@?= =?utf-8?q?example.com=5D_Hello?=",
                &t
            )
            .as_deref(),
            Some("Hello")
        );
        assert_eq!(
            without_tags("[S/MIME: INVALID signature][S/MIME signed: a@b] x", &t).as_deref(),
            Some("x")
        );
        assert_eq!(without_tags("Plain subject [S/MIME]", &t), None);
        // A placeholder at the start matches the word before it.
        assert_eq!(
            without_tags("hello pass-verdict here", &["%{result}-verdict"]).as_deref(),
            Some("hello here")
        );
    }

    #[test]
    fn the_subject_gets_our_tag_and_the_info_header() {
        let d = Display {
            tag_pass: Some(PASS.into()),
            tag_fail: Some(FAIL.into()),
            tag_other: None,
            tag_decrypted: Some("[decrypted]".into()),
            info: Some((
                "X-SMIME-Verdict".into(),
                "%{result}; signer=%{signer}".into(),
            )),
        };
        let h = vec![("Subject".to_string(), "Hello".to_string())];
        let made = ops(&d, &h, None, Some(SmimeResult::Pass), Some("a@x"), true);
        assert_eq!(
            made,
            vec![
                HeaderOp::Change {
                    name: "Subject".into(),
                    index: 1,
                    value: Some("[decrypted] [S/MIME signed: a@x] Hello".into())
                },
                HeaderOp::Insert {
                    index: 0,
                    name: "X-SMIME-Verdict".into(),
                    value: "pass; signer=a@x".into()
                }
            ]
        );
        // A restored Subject, with a forged tag inside, non-ASCII.
        let subject = ops_subject(
            &d,
            "[S/MIME signed: boss@x] Gr\u{fc}\u{df}e",
            SmimeResult::Fail,
        );
        assert_eq!(
            subject,
            "[S/MIME: INVALID signature] =?utf-8?b?R3LDvMOfZQ==?="
        );
        // No tag for the result: the Subject is left as it came.
        let ops2 = ops(&d, &h, None, Some(SmimeResult::Temperror), None, false);
        assert!(
            matches!(&ops2[..], [HeaderOp::Insert { value, .. }] if value == "temperror; signer=unknown"),
            "{ops2:?}"
        );
        let (forged, tags) = subject_ops(
            &d,
            &[
                ("Subject".into(), "[S/MIME signed: a@x] hi".into()),
                ("X-SMIME-Verdict".into(), "pass".into()),
            ],
        );
        assert_eq!((tags, forged.len()), (1, 1));
        // A control character decoded from a forged Subject stays out.
        let (forged, _) = subject_ops(
            &d,
            &[(
                "Subject".into(),
                "=?utf-8?q?=5BS/MIME_signed:_a@x=5D_hi=07there?=".into(),
            )],
        );
        assert_eq!(
            forged,
            vec![HeaderOp::Change {
                name: "Subject".into(),
                index: 1,
                value: Some("hithere".into())
            }]
        );
        // A Subject of tags alone: none of them stays behind ours.
        let h = vec![(
            "Subject".to_string(),
            "[S/MIME signed: ceo@bank]".to_string(),
        )];
        let d2 = Display {
            tag_other: Some("[S/MIME: not verified]".into()),
            ..d.clone()
        };
        assert_eq!(
            ops(&d2, &h, None, Some(SmimeResult::Policy), None, false)[0],
            HeaderOp::Change {
                name: "Subject".into(),
                index: 1,
                value: Some("[S/MIME: not verified]".into())
            }
        );
        // Invisible characters and UTF-16LE words do not hide a tag.
        assert_eq!(
            without_tags("[S/MIME\u{200b} sig\u{ad}ned: a@x] hi", &[PASS]).as_deref(),
            Some("hi")
        );
        let le: Vec<u8> = "[S/MIME signed: a@x]"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let word = format!("=?utf-16le?b?{}?= hi", openssl::base64::encode_block(&le));
        assert_eq!(without_tags(&word, &[PASS]).as_deref(), Some("hi"));
        // A control character between two harmless pieces makes no tag.
        assert_eq!(
            without_tags(
                "[S/MIME signed: x] [S/MIME\u{7} signed: ceo@bank] Pay",
                &[PASS]
            )
            .as_deref(),
            Some("Pay")
        );
        // Blanks do not push a tag past what is matched.
        let spaced = format!(
            "=?utf-8?q?{}=5BS/MIME_signed:_ceo@bank=5D?= Pay",
            "_".repeat(5000)
        );
        assert_eq!(without_tags(&spaced, &[PASS]).as_deref(), Some("Pay"));
        // Decoded twice, as some readers do.
        let inner = "=?utf-8?q?=5BS/MIME_signed:_ceo@bank=5D?=";
        let twice = format!(
            "=?utf-8?b?{}?= Pay",
            openssl::base64::encode_block(inner.as_bytes())
        );
        assert_eq!(without_tags(&twice, &[PASS]).as_deref(), Some("Pay"));
        assert_eq!(subject_value("=?x?q?y?= z"), "=?utf-8?b?PT94P3E/eT89IHo=?=");
        // Long, many starts, no end: bounded (and nothing to take out).
        let long = "[S/MIME signed: ".repeat(20_000);
        assert_eq!(without_tags(&long, &[PASS]), None);
        assert_eq!(
            fill(PASS, "pass", Some("a]b\"c@x")),
            "[S/MIME signed: abc@x]"
        );
    }

    fn ops_subject(d: &Display, subject: &str, r: SmimeResult) -> String {
        match &ops(d, &[], Some(subject), Some(r), None, false)[0] {
            HeaderOp::Change { value: Some(v), .. } => v.clone(),
            o => panic!("{o:?}"),
        }
    }
}
