//! Mailbox addresses in `From:` and other address-list header values (RFC 5322
//! §3.4, UTF-8 per RFC 6532), read from unfolded values.
//!
//! [`from_identity`] is the strict reading behind decisions: exactly one
//! mailbox in strict syntax, and nothing else in the field (display name,
//! comment, RFC 2047 encoded word) that a mail reader could show as an address.
//! Readers disagree about obsolete and malformed syntax, so whatever they could
//! read differently yields no identity at all. [`parse_address_list`] shares
//! the tokenizer and the mailbox grammar, so the two never disagree on a value
//! the strict reading accepts.

/// What a reader would take as the sender, and whether that is unambiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromIdentity {
    /// Exactly one mailbox, strict syntax, and nothing else in the field shows
    /// an address. The address is normalized: local part as written (quotes
    /// dropped where not needed), domain in ASCII lower case without a trailing
    /// dot, a domain literal as written.
    One(String),
    /// One mailbox, but its display name or a comment shows something that
    /// looks like an address, so a reader may be fooled; `what` is "display
    /// name", "quoted local part", "comment" or "encoded word" (the `@`
    /// appears only once RFC 2047 encoded words are decoded). Groups never get here: they are ambiguous.
    ShowsOther { address: String, what: &'static str },
    /// Obsolete or ambiguous syntax, or not exactly one mailbox: no identity.
    Ambiguous(&'static str),
}

/// The strict reading of a `From:` value; see [`FromIdentity`].
pub fn from_identity(value: &str) -> FromIdentity {
    use FromIdentity::{Ambiguous, One, ShowsOther};
    // Bare CR, LF or NUL can end the field early for one reader and not for
    // another; C1 controls (NEL) are line ends to some.
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Ambiguous("control character");
    }
    let tokens = tokenize(value);
    if let Some(reason) = first_bad(&tokens) {
        return Ambiguous(reason);
    }
    let mut open = false;
    for t in &tokens {
        match t.kind {
            Kind::Special(b'<') if open => return Ambiguous("unbalanced angle bracket"),
            Kind::Special(b'<') => open = true,
            Kind::Special(b'>') if !open => return Ambiguous("unbalanced angle bracket"),
            Kind::Special(b'>') => open = false,
            _ => {}
        }
    }
    if open {
        return Ambiguous("unbalanced angle bracket");
    }
    let items = list_items(&tokens);
    if items.iter().any(|&(_, end)| end == Some(b':')) {
        return Ambiguous("group syntax");
    }
    if items.iter().any(|&(_, end)| end == Some(b';')) {
        return Ambiguous("trailing text");
    }
    let mut filled = items
        .iter()
        .map(|&(item, _)| item)
        .filter(|item| item.iter().any(|t| !t.is_cfws()));
    let item = match (filled.next(), filled.next()) {
        (None, _) => return Ambiguous("no mailbox"),
        (Some(_), Some(_)) => return Ambiguous("several mailboxes"),
        (Some(_), None) if items.len() > 1 => return Ambiguous("empty list element"),
        (Some(item), None) => item,
    };
    let mailbox = match parse_mailbox(value, item) {
        Ok(m) => m,
        Err(reason) => return Ambiguous(reason),
    };
    let (raw_name, shown_name) = display_texts(value, mailbox.phrase);
    let comments = || {
        item.iter()
            .filter(|t| t.kind == Kind::Comment)
            .map(|t| t.inner(value))
    };
    // `"ceo@bank.example"@evil.example` shows another address too.
    let quoted_at = mailbox
        .address
        .rsplit_once('@')
        .is_some_and(|(local, _)| has_at(local));
    let what = if has_at(&raw_name) {
        Some("display name")
    } else if quoted_at {
        Some("quoted local part")
    } else if comments().any(has_at) {
        Some("comment")
    } else if encoded_shows_at(&raw_name, 0)
        || encoded_shows_at(&shown_name, 0)
        || comments().any(|c| encoded_shows_at(c, 0) || encoded_shows_at(&unescape(c), 0))
    {
        Some("encoded word")
    } else {
        None
    };
    match what {
        Some(what) => ShowsOther {
            address: mailbox.address,
            what,
        },
        None => One(mailbox.address),
    }
}

/// The addresses in an address-list header value, in order; display names,
/// comments, quoting and group syntax are removed, and items that are not a
/// mailbox in strict syntax are skipped. Normalized as in [`FromIdentity::One`].
pub fn parse_address_list(value: &str) -> Vec<String> {
    let tokens = tokenize(value);
    list_items(&tokens)
        .into_iter()
        // An item ended by ':' is a group's display name.
        .filter(|&(_, end)| end != Some(b':'))
        .filter_map(|(item, _)| parse_mailbox(value, item).ok())
        .map(|m| m.address)
        .collect()
}

/// The single address of a `From:` value, for choosing our own signing key:
/// `None` unless [`from_identity`] finds exactly one mailbox. A display name
/// that shows another address does not matter here; the sender is ours.
pub fn single_address(value: &str) -> Option<String> {
    match from_identity(value) {
        FromIdentity::One(address) | FromIdentity::ShowsOther { address, .. } => Some(address),
        FromIdentity::Ambiguous(_) => None,
    }
}

/// Case-insensitive in the domain, exact in the local part (RFC 8550 §3).
pub fn same_address(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => false,
    }
}

/// The domain part, lower case.
pub fn domain_of(addr: &str) -> Option<String> {
    addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

// ---------------------------------------------------------------------------
// Tokens

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A run of atext (RFC 5322 §3.2.3, any non-ASCII per RFC 6532).
    Atom,
    Quoted,
    /// Nested comments are one token.
    Comment,
    /// `[...]`, whatever is inside.
    Literal,
    /// Spaces and tabs.
    Space,
    /// One of `< > : ; @ , .`
    Special(u8),
    /// Not valid anywhere; runs to where tokenizing could resume.
    Bad(&'static str),
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Token {
    fn text<'a>(&self, src: &'a str) -> &'a str {
        &src[self.start..self.end]
    }

    /// Between the delimiters of a quoted string, comment or literal.
    fn inner<'a>(&self, src: &'a str) -> &'a str {
        &src[self.start + 1..self.end - 1]
    }

    fn is_cfws(&self) -> bool {
        matches!(self.kind, Kind::Space | Kind::Comment)
    }
}

fn is_atext_byte(b: u8) -> bool {
    b >= 0x80 || b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Splits at ASCII bytes only, so every boundary is a char boundary.
fn tokenize(src: &str) -> Vec<Token> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let kind = match bytes[i] {
            b' ' | b'\t' => {
                i = skip_while(bytes, i, |b| b == b' ' || b == b'\t');
                Kind::Space
            }
            b'"' => {
                let end = closing_quote(bytes, i + 1);
                i = end.unwrap_or(bytes.len());
                end.map_or(Kind::Bad("unbalanced quote"), |_| Kind::Quoted)
            }
            b'(' => {
                let end = closing_paren(bytes, i);
                i = end.unwrap_or(bytes.len());
                end.map_or(Kind::Bad("unbalanced comment"), |_| Kind::Comment)
            }
            b'[' => {
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b']')
                    .map(|p| i + p + 1);
                i = end.unwrap_or(bytes.len());
                end.map_or(Kind::Bad("unbalanced square bracket"), |_| Kind::Literal)
            }
            b')' => {
                i += 1;
                Kind::Bad("unbalanced comment")
            }
            b']' => {
                i += 1;
                Kind::Bad("unbalanced square bracket")
            }
            b'\\' => {
                i += 1;
                Kind::Bad("invalid character")
            }
            b @ (b'<' | b'>' | b':' | b';' | b'@' | b',' | b'.') => {
                i += 1;
                Kind::Special(b)
            }
            b if is_atext_byte(b) => {
                i = skip_while(bytes, i, is_atext_byte);
                Kind::Atom
            }
            _ => {
                i += 1;
                Kind::Bad("control character")
            }
        };
        out.push(Token {
            kind,
            start,
            end: i,
        });
    }
    out
}

fn skip_while(bytes: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while i < bytes.len() && keep(bytes[i]) {
        i += 1;
    }
    i
}

/// The index after the closing quote; `i` is just after the opening one.
fn closing_quote(bytes: &[u8], mut i: usize) -> Option<usize> {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index after the `)` that closes the comment opened at `open`.
fn closing_paren(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn first_bad(tokens: &[Token]) -> Option<&'static str> {
    tokens.iter().find_map(|t| match t.kind {
        Kind::Bad(reason) => Some(reason),
        _ => None,
    })
}

/// Splits at `,` `:` `;` outside angle brackets; each item with the byte that
/// ended it (`None` for the last).
fn list_items(tokens: &[Token]) -> Vec<(&[Token], Option<u8>)> {
    let mut out = Vec::new();
    let (mut start, mut in_angle) = (0, false);
    for (i, t) in tokens.iter().enumerate() {
        match t.kind {
            Kind::Special(b'<') => in_angle = true,
            Kind::Special(b'>') => in_angle = false,
            Kind::Special(b @ (b',' | b':' | b';')) if !in_angle => {
                out.push((&tokens[start..i], Some(b)));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push((&tokens[start..], None));
    out
}

fn trim_cfws(tokens: &[Token]) -> &[Token] {
    let start = tokens.iter().position(|t| !t.is_cfws());
    let end = tokens.iter().rposition(|t| !t.is_cfws());
    match (start, end) {
        (Some(s), Some(e)) => &tokens[s..=e],
        _ => &[],
    }
}

// ---------------------------------------------------------------------------
// Mailbox grammar

struct Mailbox<'t> {
    address: String,
    /// The display name's tokens, comments included; empty for a bare addr-spec.
    phrase: &'t [Token],
}

/// `mailbox = name-addr / addr-spec` in strict syntax, except that a display
/// name may hold `.` (obs-phrase, common in real mail) and `@` (so that it can
/// be reported as showing an address).
fn parse_mailbox<'t>(src: &str, item: &'t [Token]) -> Result<Mailbox<'t>, &'static str> {
    if let Some(reason) = first_bad(item) {
        return Err(reason);
    }
    let mut opens = item
        .iter()
        .enumerate()
        .filter(|(_, t)| t.kind == Kind::Special(b'<'))
        .map(|(i, _)| i);
    match (opens.next(), opens.next()) {
        (None, _) => {
            if item.iter().any(|t| t.kind == Kind::Special(b'>')) {
                return Err("unbalanced angle bracket");
            }
            let core = trim_cfws(item);
            if core.is_empty() {
                return Err("no mailbox");
            }
            Ok(Mailbox {
                address: parse_addr_spec(src, core)?,
                phrase: &[],
            })
        }
        (Some(open), None) => {
            let close = item[open..]
                .iter()
                .position(|t| t.kind == Kind::Special(b'>'))
                .ok_or("unbalanced angle bracket")?
                + open;
            let (phrase, inner, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
            if phrase.iter().any(|t| t.kind == Kind::Special(b'>')) {
                return Err("unbalanced angle bracket");
            }
            if rest.iter().any(|t| !t.is_cfws()) {
                return Err("trailing text");
            }
            let phrase_ok = |t: &Token| {
                t.is_cfws()
                    || matches!(
                        t.kind,
                        Kind::Atom | Kind::Quoted | Kind::Special(b'.' | b'@')
                    )
            };
            if !phrase.iter().all(phrase_ok) {
                return Err("invalid display name");
            }
            let core = trim_cfws(inner);
            if core.is_empty() {
                return Err("no mailbox");
            }
            if core[0].kind == Kind::Special(b'@')
                || core.iter().any(|t| t.kind == Kind::Special(b':'))
            {
                return Err("source route");
            }
            Ok(Mailbox {
                address: parse_addr_spec(src, core)?,
                phrase,
            })
        }
        (Some(_), Some(_)) => Err("several angle addresses"),
    }
}

/// `core` has no CFWS at its ends. CFWS next to the `@` is valid RFC 5322,
/// but readers disagree on it, so it is refused.
fn parse_addr_spec(src: &str, core: &[Token]) -> Result<String, &'static str> {
    let at = core
        .iter()
        .position(|t| t.kind == Kind::Special(b'@'))
        .ok_or("no mailbox")?;
    let raw = &src[core[0].start..core[core.len() - 1].end];
    if !encoded_words(raw).is_empty() {
        return Err("encoded word in address");
    }
    let local = local_part(src, &core[..at])?;
    let domain = domain(src, &core[at + 1..])?;
    Ok(format!("{local}@{domain}"))
}

/// A dot-atom or a single quoted string, nothing obsolete.
fn local_part(src: &str, toks: &[Token]) -> Result<String, &'static str> {
    match toks {
        [] => Err("empty local part"),
        [.., last] if last.is_cfws() => Err("obsolete local part"),
        [q] if q.kind == Kind::Quoted => {
            let content = unescape(q.inner(src));
            if content.is_empty() {
                return Err("empty local part");
            }
            if content.chars().any(|c| c != ' ' && bad_in_address(c)) {
                return Err("invalid character");
            }
            // RFC 5321 §4.1.2: the unquoted form is the same mailbox.
            Ok(if is_dot_atom_text(&content) {
                content
            } else {
                q.text(src).to_owned()
            })
        }
        _ => {
            if !is_dotted(toks) {
                return Err("obsolete local part");
            }
            let text = &src[toks[0].start..toks[toks.len() - 1].end];
            if text.chars().any(bad_in_address) {
                return Err("invalid character");
            }
            Ok(text.to_owned())
        }
    }
}

/// A dot-atom of labels or a domain literal.
fn domain(src: &str, toks: &[Token]) -> Result<String, &'static str> {
    const INVALID: &str = "invalid domain";
    if let [lit] = toks {
        if lit.kind == Kind::Literal {
            let inner = lit.inner(src);
            // IPv4, `IPv6:...` or `tag:...` (RFC 5321 §4.1.3); anything more
            // (an `@`, a space) only confuses.
            let ok = !inner.is_empty()
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-'));
            return if ok {
                Ok(lit.text(src).to_owned())
            } else {
                Err(INVALID)
            };
        }
    }
    // A trailing dot (`example.com.`) is no dot-atom: readers disagree
    // (Python shows no address at all).
    if toks.is_empty() || !is_dotted(toks) {
        return Err(INVALID);
    }
    let text = &src[toks[0].start..toks[toks.len() - 1].end];
    let label_char = |c: char| {
        c.is_ascii_alphanumeric()
            || c == '-'
            || c == '_'
            || c == '.'
            || (!c.is_ascii() && !bad_in_address(c))
    };
    if text.chars().all(label_char) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(INVALID)
    }
}

/// `atom *("." atom)`, without CFWS anywhere.
fn is_dotted(toks: &[Token]) -> bool {
    toks.len() % 2 == 1
        && toks.iter().enumerate().all(|(i, t)| {
            if i % 2 == 0 {
                t.kind == Kind::Atom
            } else {
                t.kind == Kind::Special(b'.')
            }
        })
}

fn is_dot_atom_text(s: &str) -> bool {
    s.split('.')
        .all(|label| !label.is_empty() && label.bytes().all(is_atext_byte))
}

/// Characters that have no place in an address a reader shows: controls,
/// whitespace, invisible and bidi formatting, U+FFFD (a byte lost in decoding),
/// and look-alikes of `@` and of the dot that IDNA treats as a label separator.
fn bad_in_address(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_control() || c == ' ';
    }
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{AD}'
                | '\u{34F}'
                | '\u{61C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{2000}'..='\u{206F}'
                | '\u{2E00}'..='\u{2E7F}'
                | '\u{3000}'..='\u{3003}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE1F}'
                | '\u{FE30}'..='\u{FE6F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFF}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
        || (('\u{FF00}'..='\u{FFEF}').contains(&c) && !c.is_alphanumeric())
}

/// Resolves quoted-pairs.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The display name as written and as shown (quoted strings unquoted), with
/// comments left out: they are checked on their own.
fn display_texts(src: &str, phrase: &[Token]) -> (String, String) {
    let (mut raw, mut shown) = (String::new(), String::new());
    for t in phrase {
        match t.kind {
            Kind::Comment => {
                raw.push(' ');
                shown.push(' ');
            }
            Kind::Quoted => {
                raw.push_str(t.text(src));
                shown.push_str(&unescape(t.inner(src)));
            }
            _ => {
                raw.push_str(t.text(src));
                shown.push_str(t.text(src));
            }
        }
    }
    (raw, shown)
}

/// `@` and what readers show like it (full-width, small, circled).
fn has_at(s: &str) -> bool {
    s.contains(['@', '\u{FF20}', '\u{FE6B}', '\u{24D0}'])
}

// ---------------------------------------------------------------------------
// RFC 2047 encoded words, decoded only far enough to see whether a reader
// would show an `@`. Where decoders differ, the reading that shows one wins.

struct EncodedWord<'a> {
    start: usize,
    end: usize,
    charset: &'a str,
    bytes: Vec<u8>,
}

enum Found<'a> {
    Word(EncodedWord<'a>),
    NotHere,
    NoneLater,
}

/// `=?charset?B|Q?text?=` anywhere in `s`, also inside atoms and quoted
/// strings, since lenient readers decode those too.
fn encoded_words(s: &str) -> Vec<EncodedWord<'_>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = s[from..].find("=?") {
        let start = from + p;
        match encoded_word_at(s, start) {
            Found::Word(w) => {
                from = w.end;
                out.push(w);
            }
            Found::NotHere => from = start + 2,
            // Stops the scan so that it stays linear.
            Found::NoneLater => break,
        }
    }
    out
}

fn encoded_word_at(s: &str, start: usize) -> Found<'_> {
    let rest = &s[start + 2..];
    let Some(q1) = rest.find('?') else {
        return Found::NoneLater;
    };
    let charset = &rest[..q1];
    let encoding = match rest.as_bytes()[q1 + 1..] {
        [e @ (b'B' | b'b' | b'Q' | b'q'), b'?', ..] => e.to_ascii_uppercase(),
        _ => return Found::NotHere,
    };
    if charset.is_empty() || charset.contains(char::is_whitespace) {
        return Found::NotHere;
    }
    let text_start = start + 2 + q1 + 3;
    let Some(len) = s[text_start..].find("?=") else {
        return Found::NoneLater;
    };
    let text = &s[text_start..text_start + len];
    Found::Word(EncodedWord {
        start,
        end: text_start + len + 2,
        // RFC 2231 adds `*language`.
        charset: charset.split('*').next().unwrap_or(charset),
        bytes: if encoding == b'B' {
            super::encoding::decode_base64(text.as_bytes())
        } else {
            q_decode(text)
        },
    })
}

/// Whether decoding the encoded words in `s` shows an `@`. Adjacent words in
/// one charset are also decoded as one byte string, as some readers do, so a
/// character split between two words is seen.
fn encoded_shows_at(s: &str, depth: u8) -> bool {
    let words = encoded_words(s);
    let mut i = 0;
    while i < words.len() {
        let mut j = i + 1;
        while j < words.len()
            && words[j].charset.eq_ignore_ascii_case(words[i].charset)
            && s[words[j - 1].end..words[j].start]
                .bytes()
                .all(|b| b == b' ' || b == b'\t')
        {
            j += 1;
        }
        let run = &words[i..j];
        let mut texts = Vec::new();
        if run.len() > 1 {
            let joined: Vec<u8> = run.iter().flat_map(|w| w.bytes.iter().copied()).collect();
            texts.extend(decodings(run[0].charset, &joined));
        }
        for w in run {
            texts.extend(decodings(w.charset, &w.bytes));
        }
        // Some readers decode again what decoding produced.
        if texts
            .iter()
            .any(|t| has_at(t) || (depth < 2 && encoded_shows_at(t, depth + 1)))
        {
            return true;
        }
        i = j;
    }
    false
}

/// The text a reader shows for a header value: RFC 2047 encoded words
/// decoded (adjacent ones joined, as readers join them), the rest as it is.
pub fn displayed_text(s: &str) -> String {
    displayed_reading(s, 0)
}

/// Every text readers may show for a header value: where readers decode a
/// charset two ways (UTF-16 without a byte order mark), both.
pub fn displayed_texts(s: &str) -> Vec<String> {
    let first = displayed_reading(s, 0);
    let second = displayed_reading(s, 1);
    if second == first {
        vec![first]
    } else {
        vec![first, second]
    }
}

/// One reading: the `which`-th decoding of each charset where there are
/// several.
fn displayed_reading(s: &str, which: usize) -> String {
    let words = encoded_words(s);
    if words.is_empty() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    let mut i = 0;
    while i < words.len() {
        // Blanks between adjacent encoded words are not shown (RFC 2047 §6.2).
        let gap = &s[at..words[i].start];
        if i == 0
            || !gap
                .bytes()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            out.push_str(gap);
        }
        let mut j = i + 1;
        let mut bytes = words[i].bytes.clone();
        while j < words.len()
            && words[j].charset.eq_ignore_ascii_case(words[i].charset)
            && s[words[j - 1].end..words[j].start]
                .bytes()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            bytes.extend_from_slice(&words[j].bytes);
            j += 1;
        }
        let readings = decodings(words[i].charset, &bytes);
        out.push_str(
            readings
                .get(which)
                .or(readings.first())
                .map_or("", String::as_str),
        );
        at = words[j - 1].end;
        i = j;
    }
    out.push_str(&s[at..]);
    out
}

fn q_decode(text: &str) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' => {
                if let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    out.push((h << 4 | l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'=');
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The texts a reader might show for `bytes` in `charset`.
fn decodings(charset: &str, bytes: &[u8]) -> Vec<String> {
    let cs = charset.to_ascii_lowercase();
    let lossy = || String::from_utf8_lossy(bytes).into_owned();
    let latin1 = || bytes.iter().copied().map(char::from).collect::<String>();
    match cs.as_str() {
        "utf-8" | "utf8" | "us-ascii" | "ascii" => vec![lossy()],
        "utf-7" | "unicode-1-1-utf-7" | "csunicode11utf7" => vec![utf7(bytes)],
        // Without a byte order mark readers disagree on the order; try both.
        c if c.starts_with("utf-16") || c.starts_with("ucs-2") || c.starts_with("unicode") => {
            vec![utf16(bytes, true), utf16(bytes, false)]
        }
        c if c.starts_with("utf-32") || c.starts_with("ucs-4") => {
            vec![utf32(bytes, true), utf32(bytes, false)]
        }
        c if c.starts_with("iso-2022-") || c.starts_with("csiso2022") => {
            vec![iso2022(bytes, c.contains("jp"))]
        }
        c => match Dbcs::for_charset(c) {
            Some(family) => vec![family.decode(bytes)],
            None if is_single_byte(c) => vec![latin1()],
            // A charset we cannot read (EBCDIC cp037 puts `@` at 0x7C, and
            // some reader may know it): fail closed, as if it showed one.
            None => vec!["@".into()],
        },
    }
}

/// ASCII-compatible single-byte charsets: `@` is 0x40 and there is no
/// look-alike, so Latin-1 stands in for all of them. Named one by one: a
/// prefix such as `ibm` or `cp4` would take in EBCDIC (ibm037, cp424).
fn is_single_byte(cs: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "iso-8859-",
        "iso8859-",
        "iso_8859-",
        "windows-125",
        "cp125",
        "koi8-",
        "latin",
        "x-mac-",
        "tis-620",
    ];
    const NAMES: [&str; 10] = [
        "macintosh",
        "viscii",
        "cp437",
        "cp850",
        "cp852",
        "cp866",
        "ibm437",
        "ibm850",
        "ibm852",
        "ibm866",
    ];
    PREFIXES.iter().any(|p| cs.starts_with(p)) || NAMES.contains(&cs)
}

fn utf16(bytes: &[u8], big_endian: bool) -> String {
    let units = bytes.chunks_exact(2).map(|p| {
        if big_endian {
            u16::from_be_bytes([p[0], p[1]])
        } else {
            u16::from_le_bytes([p[0], p[1]])
        }
    });
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

fn utf32(bytes: &[u8], big_endian: bool) -> String {
    bytes
        .chunks_exact(4)
        .map(|p| {
            let b = [p[0], p[1], p[2], p[3]];
            let u = if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            };
            char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect()
}

/// RFC 2152: `+` starts modified base64 of UTF-16, `-` may end it.
fn utf7(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'+' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        i += 1;
        if bytes.get(i) == Some(&b'-') {
            out.push('+');
            i += 1;
            continue;
        }
        let (mut acc, mut bits, mut units) = (0u32, 0u32, Vec::new());
        while let Some(v) = bytes.get(i).and_then(|&b| super::encoding::base64_value(b)) {
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 16 {
                bits -= 16;
                units.push((acc >> bits) as u16);
                acc &= (1 << bits) - 1;
            }
            i += 1;
        }
        out.extend(char::decode_utf16(units).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)));
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    out
}

/// ISO-2022-JP (ESC `$@`/`$B` into JIS X 0208, ESC `(` back) and ISO-2022-KR/CN
/// (ESC `$)` designates, SO/SI shift). Escapes not every reader knows are not
/// followed, and a stray byte in two-byte mode returns to ASCII: both show more
/// bytes as ASCII, never fewer.
fn iso2022(bytes: &[u8], jp: bool) -> String {
    let at_pair = if jp { [0x21, 0x77] } else { [0x23, 0x40] };
    let (mut g0_double, mut g1_double, mut shifted) = (false, false, false);
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == 0x1B {
            let seq = &bytes[i + 1..];
            let len = match (jp, seq) {
                (true, [b'(', b'B' | b'J' | b'I', ..]) => {
                    g0_double = false;
                    2
                }
                (true, [b'$', b'@' | b'B', ..]) => {
                    g0_double = true;
                    2
                }
                (false, [b'$', b')', b'A' | b'C' | b'E' | b'G' | b'H', ..]) => {
                    g1_double = true;
                    3
                }
                _ => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    0
                }
            };
            i += 1 + len;
            continue;
        }
        if !jp && (b == 0x0E || b == 0x0F) {
            shifted = b == 0x0E;
            i += 1;
            continue;
        }
        let double = if shifted { g1_double } else { g0_double };
        if double && (0x21..=0x7E).contains(&b) {
            match bytes.get(i + 1) {
                Some(&t) if (0x21..=0x7E).contains(&t) => {
                    out.push(if [b, t] == at_pair {
                        '\u{FF20}'
                    } else {
                        char::REPLACEMENT_CHARACTER
                    });
                    i += 2;
                }
                _ => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    i += 1;
                }
            }
            continue;
        }
        if double {
            if shifted {
                shifted = false;
            } else {
                g0_double = false;
            }
        }
        out.push(if b < 0x80 {
            char::from(b)
        } else {
            char::REPLACEMENT_CHARACTER
        });
        i += 1;
    }
    out
}

/// Multi-byte charsets whose trail bytes may be ASCII.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dbcs {
    ShiftJis,
    EucJp,
    Gbk,
    Big5,
    EucKr,
}

impl Dbcs {
    fn for_charset(cs: &str) -> Option<Dbcs> {
        Some(match cs {
            "shift_jis" | "shift-jis" | "sjis" | "x-sjis" | "ms_kanji" | "csshiftjis"
            | "windows-31j" | "cp932" | "ms932" | "x-ms-cp932" => Dbcs::ShiftJis,
            "euc-jp" | "x-euc-jp" | "eucjp" | "cseucpkdfmtjapanese" => Dbcs::EucJp,
            "gbk" | "gb2312" | "gb18030" | "cp936" | "ms936" | "windows-936" | "x-gbk"
            | "euc-cn" | "x-euc-cn" | "csgb2312" | "gb_2312-80" | "chinese" | "iso-ir-58" => {
                Dbcs::Gbk
            }
            "big5" | "big5-hkscs" | "cp950" | "x-x-big5" | "csbig5" | "cn-big5" | "x-big5" => {
                Dbcs::Big5
            }
            "euc-kr" | "cseuckr" | "cp949" | "uhc" | "windows-949" | "x-windows-949"
            | "ks_c_5601-1987" | "ks_c_5601-1989" | "ksc5601" | "ksc_5601" | "korean"
            | "csksc56011987" | "iso-ir-149" => Dbcs::EucKr,
            _ => return None,
        })
    }

    fn is_lead(self, b: u8) -> bool {
        match self {
            Dbcs::ShiftJis => matches!(b, 0x81..=0x9F | 0xE0..=0xFC),
            Dbcs::EucJp => matches!(b, 0x8E | 0x8F | 0xA1..=0xFE),
            Dbcs::Gbk | Dbcs::Big5 | Dbcs::EucKr => matches!(b, 0x81..=0xFE),
        }
    }

    /// Whether an `@` after this lead byte is shown: decoders show it when the
    /// pair is invalid or unmapped, and these are the leads for which at least
    /// one common decoder (WHATWG, Windows, iconv) has no such pair.
    fn shows_at_after(self, lead: u8) -> bool {
        match self {
            Dbcs::ShiftJis => matches!(lead, 0x82 | 0x85..=0x88 | 0xEB..=0xFC),
            Dbcs::Gbk => matches!(lead, 0xA1..=0xA7),
            Dbcs::Big5 => matches!(lead, 0x81..=0xA0 | 0xC8 | 0xFA..=0xFE),
            Dbcs::EucJp | Dbcs::EucKr => true,
        }
    }

    /// U+FF20 and U+FE6B.
    fn at_pairs(self) -> &'static [[u8; 2]] {
        match self {
            Dbcs::ShiftJis => &[[0x81, 0x97]],
            Dbcs::EucJp => &[[0xA1, 0xF7]],
            Dbcs::Gbk => &[[0xA3, 0xC0], [0xA9, 0x88]],
            Dbcs::Big5 => &[[0xA2, 0x49], [0xA2, 0x4E]],
            Dbcs::EucKr => &[[0xA3, 0xC0]],
        }
    }

    /// Other characters come out as U+FFFD; an ASCII byte taken as a trail
    /// byte ends a character either way, so the alignment is the decoders'.
    fn decode(self, bytes: &[u8]) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                out.push(char::from(b));
                i += 1;
                continue;
            }
            let Some(&t) = bytes.get(i + 1).filter(|_| self.is_lead(b)) else {
                out.push(char::REPLACEMENT_CHARACTER);
                i += 1;
                continue;
            };
            let byte_at = |k: usize| bytes.get(i + k).copied().unwrap_or(0);
            i += if self.at_pairs().contains(&[b, t]) {
                out.push('\u{FF20}');
                2
            } else if t == b'@' && self.shows_at_after(b) {
                out.push(char::REPLACEMENT_CHARACTER);
                1
            } else if self == Dbcs::Gbk
                && t.is_ascii_digit()
                && byte_at(2) >= 0x81
                && byte_at(3).is_ascii_digit()
            {
                out.push(char::REPLACEMENT_CHARACTER);
                4
            } else if self == Dbcs::EucJp && b == 0x8F && t >= 0xA1 && byte_at(2) >= 0xA1 {
                out.push(char::REPLACEMENT_CHARACTER);
                3
            } else {
                out.push(char::REPLACEMENT_CHARACTER);
                2
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::FromIdentity::{Ambiguous, One, ShowsOther};
    use super::*;

    fn shows(address: &str, what: &'static str) -> FromIdentity {
        ShowsOther {
            address: address.to_owned(),
            what,
        }
    }

    #[test]
    fn common_forms() {
        let cases = [
            ("alice@example.com", "alice@example.com"),
            ("Alice <alice@Example.COM>", "alice@example.com"),
            ("\"Smith, Alice\" <alice@example.com>", "alice@example.com"),
            ("alice@example.com (Alice Smith)", "alice@example.com"),
            (
                "(comment <evil@x.test>) Alice <alice@example.com>",
                "alice@example.com",
            ),
            (
                "=?utf-8?q?J=C3=BCrgen?= <juergen@example.de>",
                "juergen@example.de",
            ),
            (" <alice@example.com> ", "alice@example.com"),
            ("\"alice\"@example.com", "alice@example.com"),
        ];
        for (input, want) in cases {
            assert_eq!(single_address(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn local_part_case_is_kept() {
        assert_eq!(
            single_address("Alice@Example.com").unwrap(),
            "Alice@example.com"
        );
    }

    #[test]
    fn several_or_no_addresses_are_not_a_single_from() {
        assert_eq!(single_address("a@example.com, b@example.com"), None);
        assert_eq!(single_address("undisclosed-recipients:;"), None);
        assert_eq!(single_address(""), None);
        assert_eq!(single_address("Alice"), None);
        assert_eq!(single_address("<>"), None);
        // Source routes were accepted before; readers differ on them.
        assert_eq!(
            single_address("Alice <@relay.test:alice@example.com>"),
            None
        );
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        let v = parse_address_list("\"a, b\" <a@x.test>, Group: c@y.test, d@z.test;");
        assert_eq!(v, vec!["a@x.test", "c@y.test", "d@z.test"]);
    }

    #[test]
    fn address_list_skips_what_does_not_parse() {
        let v = parse_address_list("a b@x.test, <@r:c@y.test>, \"d\"@Z.test, e@, (f@g)");
        assert_eq!(v, vec!["d@z.test"]);
        assert!(parse_address_list("\"open <a@x.test>").is_empty());
        assert_eq!(parse_address_list("a@x.test, \"open"), vec!["a@x.test"]);
    }

    #[test]
    fn address_comparison() {
        assert!(same_address("alice@EXAMPLE.com", "alice@example.COM"));
        assert!(!same_address("Alice@example.com", "alice@example.com"));
        assert!(!same_address("alice", "alice"));
        assert_eq!(domain_of("a@Example.COM").as_deref(), Some("example.com"));
    }

    #[test]
    fn one_mailbox() {
        let cases = [
            ("alice@example.com", "alice@example.com"),
            ("Alice <alice@Example.COM>", "alice@example.com"),
            ("\"Smith, Alice\" <alice@example.com>", "alice@example.com"),
            ("alice@example.com (Alice Smith)", "alice@example.com"),
            ("(x) Alice <alice@example.com>", "alice@example.com"),
            ("Alice <alice@example.com> (work)", "alice@example.com"),
            (
                "Alice <(here) alice@example.com (there)>",
                "alice@example.com",
            ),
            (
                "=?utf-8?q?J=C3=BCrgen?= <juergen@example.de>",
                "juergen@example.de",
            ),
            (
                "=?ISO-8859-1?Q?J=FCrgen?= <juergen@example.de>",
                "juergen@example.de",
            ),
            ("John Q. Public <jqp@example.com>", "jqp@example.com"),
            (" <alice@example.com> ", "alice@example.com"),
            ("< alice@example.com >", "alice@example.com"),
            ("\"alice\"@example.com", "alice@example.com"),
            ("\"al\\ice\"@example.com", "alice@example.com"),
            ("\"john smith\"@example.com", "\"john smith\"@example.com"),
            ("\"a\\\"b\"@example.com", "\"a\\\"b\"@example.com"),
            ("Alice\t<alice@example.com>", "alice@example.com"),
            ("\"Alice (home)\" <alice@example.com>", "alice@example.com"),
            ("\"Alice <home>\" <alice@example.com>", "alice@example.com"),
            ("Alice@Example.com", "Alice@example.com"),
            ("o'brien+tag@example.com", "o'brien+tag@example.com"),
            ("alice@[192.0.2.1]", "alice@[192.0.2.1]"),
            ("alice@[IPv6:2001:db8::1]", "alice@[IPv6:2001:db8::1]"),
            ("alice@mail_1.example.com", "alice@mail_1.example.com"),
            ("Jörg <jörg@Bücher.example>", "jörg@bücher.example"),
            ("\u{FFFD}lice <alice@example.com>", "alice@example.com"),
            // ISO-2022-JP 石井: the JIS bytes hold 0x40, which is no `@`.
            (
                "=?ISO-2022-JP?B?GyRCQFAwZhsoQg==?= <ishii@example.jp>",
                "ishii@example.jp",
            ),
            // Shift_JIS 山田　太郎: the ideographic space is 0x81 0x40.
            (
                "=?shift_jis?b?jlKTY4FAkb6YWQ==?= <yamada@example.jp>",
                "yamada@example.jp",
            ),
            ("=?big5?b?pP2kcKn6?= <wang@example.tw>", "wang@example.tw"),
            (
                "=?utf-16?b?//5KAPwAcgBnAGUAbgA=?= <j@example.de>",
                "j@example.de",
            ),
            ("price=?5 <alice@example.com>", "alice@example.com"),
        ];
        for (input, want) in cases {
            assert_eq!(from_identity(input), One(want.to_owned()), "{input}");
            assert_eq!(single_address(input).as_deref(), Some(want), "{input}");
            assert_eq!(parse_address_list(input), vec![want], "{input}");
        }
    }

    #[test]
    fn shows_another_address() {
        let evil = "evil@attacker.example";
        let cases = [
            (
                "\"ceo@bank.example\" <evil@attacker.example>",
                "display name",
            ),
            ("ceo@bank.example <evil@attacker.example>", "display name"),
            ("ceo@bank.example <evil@Attacker.Example>", "display name"),
            (
                "ceo\u{FF20}bank.example <evil@attacker.example>",
                "display name",
            ),
            (
                "\"ceo\u{FE6B}bank\" <evil@attacker.example>",
                "display name",
            ),
            ("\"ceo\\@bank\" <evil@attacker.example>", "display name"),
            ("CEO (ceo@bank.example) <evil@attacker.example>", "comment"),
            ("(ceo@bank.example) evil@attacker.example", "comment"),
            ("evil@attacker.example (ceo@bank.example)", "comment"),
            ("evil@attacker.example (x (ceo\u{FF20}bank))", "comment"),
            ("<evil@attacker.example (ceo@bank.example)>", "comment"),
            (
                "=?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?utf-8?q?ceo=40bank.example?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?UTF-8*en?Q?ceo=40bank?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "\"=?utf-8?q?ceo=40bank.example?=\" <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?utf-8?q?ceo=EF=BC=A0bank?= <evil@attacker.example>",
                "encoded word",
            ),
            // U+FF20 split between two words; readers join the bytes.
            (
                "=?utf-8?q?ceo=EF=BC?= =?UTF-8?q?=A0bank?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?utf-8?b?Y2Vv?= =?utf-8?b?QGJhbms=?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?utf-8?b?Y2Vv=QGJhbms=?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?iso-8859-1?q?ceo=40bank?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?windows-1252?q?ceo=40bank?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?x-unknown?q?ceo=EF=BC=A0bank?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?utf-7?q?ceo+AEA-bank.example?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?utf-16be?b?AGMAZQBvAEAAYgBhAG4Aaw==?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?utf-16?b?YwBlAG8AQABiAGEAbgBrAA==?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?iso-2022-jp?b?Y2VvGyRCIXcbKEJiYW5r?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?shift_jis?b?Y2VvgkBiYW5r?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "=?big5?b?Y2VvokliYW5r?= <evil@attacker.example>",
                "encoded word",
            ),
            (
                "evil@attacker.example (=?utf-8?q?ceo=40bank?=)",
                "encoded word",
            ),
            // Encoded twice: some readers decode twice.
            (
                "=?utf-8?b?PT91dGYtOD9xP2Nlbz00MGJhbms/PQ==?= <evil@attacker.example>",
                "encoded word",
            ),
        ];
        for (input, what) in cases {
            assert_eq!(from_identity(input), shows(evil, what), "{input}");
            assert_eq!(single_address(input).as_deref(), Some(evil), "{input}");
        }
        // Strict on purpose: even the same address in the display name counts.
        assert_eq!(
            from_identity("\"alice@example.com\" <alice@example.com>"),
            shows("alice@example.com", "display name")
        );
        assert_eq!(
            from_identity("a@x.example <b@y.example>"),
            shows("b@y.example", "display name")
        );
        assert_eq!(
            from_identity("(comment <evil@x.test>) Alice <alice@example.com>"),
            shows("alice@example.com", "comment")
        );
    }

    #[test]
    fn ambiguous() {
        let cases = [
            ("", "no mailbox"),
            ("   ", "no mailbox"),
            ("<>", "no mailbox"),
            ("Alice <>", "no mailbox"),
            ("Alice", "no mailbox"),
            ("(ceo@bank.example)", "no mailbox"),
            ("<alice>", "no mailbox"),
            ("alice\u{FF20}example.com", "no mailbox"),
            ("Bank: ceo@bank.example;", "group syntax"),
            ("undisclosed-recipients:;", "group syntax"),
            ("a@x.example, Team: b@y.example;", "group syntax"),
            ("a@x.example, b@y.example", "several mailboxes"),
            ("Smith, Alice <alice@example.com>", "several mailboxes"),
            ("alice@example.com,", "empty list element"),
            (", alice@example.com", "empty list element"),
            ("<@relay.example:ceo@bank.example>", "source route"),
            ("Alice <@relay.test:alice@example.com>", "source route"),
            ("<@a,@b:ceo@bank.example>", "source route"),
            ("<a@x.example> <b@y.example>", "several angle addresses"),
            ("Alice <a@x.example> <>", "several angle addresses"),
            ("\"unbalanced <a@x.example>", "unbalanced quote"),
            ("alice\"@example.com", "unbalanced quote"),
            ("Alice <alice@example.com", "unbalanced angle bracket"),
            ("alice@example.com>", "unbalanced angle bracket"),
            ("Alice <<alice@example.com>>", "unbalanced angle bracket"),
            ("Alice> <alice@example.com>", "unbalanced angle bracket"),
            ("(unclosed alice@example.com", "unbalanced comment"),
            ("alice@example.com (a (b)", "unbalanced comment"),
            ("alice@example.com)", "unbalanced comment"),
            ("alice@[192.0.2.1", "unbalanced square bracket"),
            ("alice@example.com]", "unbalanced square bracket"),
            (
                "alice@example.com\rFrom: ceo@bank.example",
                "control character",
            ),
            (
                "alice@example.com\nFrom: ceo@bank.example",
                "control character",
            ),
            ("alice@example.com\0", "control character"),
            ("\"a\0\"@example.com", "control character"),
            ("alice@example.com\u{7F}", "control character"),
            ("Alice\u{85} <alice@example.com>", "control character"),
            ("Alice <alice@example.com> bob", "trailing text"),
            ("<alice@example.com> ceo@bank.example", "trailing text"),
            ("alice@example.com;", "trailing text"),
            ("a b@example.com", "obsolete local part"),
            ("Alice alice@example.com", "obsolete local part"),
            ("a.@example.com", "obsolete local part"),
            (".a@example.com", "obsolete local part"),
            ("a..b@example.com", "obsolete local part"),
            ("a . b@example.com", "obsolete local part"),
            ("a(x).b@example.com", "obsolete local part"),
            ("\"a\".\"b\"@example.com", "obsolete local part"),
            ("a.\"b\"@example.com", "obsolete local part"),
            ("\"a\".b@example.com", "obsolete local part"),
            ("a\"b\"@example.com", "obsolete local part"),
            ("alice @ example.com", "obsolete local part"),
            ("alice (x)@example.com", "obsolete local part"),
            ("Alice <alice @example.com>", "obsolete local part"),
            ("[x]@example.com", "obsolete local part"),
            ("@example.com", "empty local part"),
            ("\"\"@example.com", "empty local part"),
            ("alice@", "invalid domain"),
            ("Alice <alice@example.com.>", "invalid domain"),
            ("alice@example.com.", "invalid domain"),
            ("alice@ example.com", "invalid domain"),
            ("alice@exa mple.com", "invalid domain"),
            ("alice@exa(mple).com", "invalid domain"),
            ("alice@example.com bob", "invalid domain"),
            ("alice@example..com", "invalid domain"),
            ("alice@.example.com", "invalid domain"),
            ("alice@example.com..", "invalid domain"),
            ("alice@.", "invalid domain"),
            ("alice@exa!mple.com", "invalid domain"),
            ("alice@bank\u{3002}example", "invalid domain"),
            ("alice@bank\u{FF0E}example", "invalid domain"),
            ("alice@exa\u{200B}mple.com", "invalid domain"),
            ("alice@a@example.com", "invalid domain"),
            ("<alice@example.com, bob@example.com>", "invalid domain"),
            ("alice@[]", "invalid domain"),
            ("alice@[a@b]", "invalid domain"),
            ("alice@[1.2.3.4 ]", "invalid domain"),
            ("alice@\"example.com\"", "invalid domain"),
            ("=?utf-8?q?ceo?=@example.com", "encoded word in address"),
            (
                "Alice <=?utf-8?q?ceo?=@example.com>",
                "encoded word in address",
            ),
            ("\"=?utf-8?q?ceo?=\"@example.com", "encoded word in address"),
            ("alice@=?utf-8?q?example?=.com", "encoded word in address"),
            ("a\\b@example.com", "invalid character"),
            ("a\u{202E}b@example.com", "invalid character"),
            ("\"a\u{A0}b\"@example.com", "invalid character"),
            ("\"a\tb\"@example.com", "invalid character"),
            ("ceo\u{FF20}bank@evil.example", "invalid character"),
            ("\u{FFFD}@example.com", "invalid character"),
            (
                "[External] Alice <alice@example.com>",
                "invalid display name",
            ),
        ];
        for (input, reason) in cases {
            assert_eq!(from_identity(input), Ambiguous(reason), "{input:?}");
            assert_eq!(single_address(input), None, "{input:?}");
        }
    }

    /// Counts `@` outside quoted strings.
    fn bare_ats(s: &str) -> usize {
        let (mut n, mut quoted, mut escaped) = (0, false, false);
        for c in s.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '@' if !quoted => n += 1,
                _ => {}
            }
        }
        n
    }

    fn check_invariants(input: &str) -> bool {
        match from_identity(input) {
            One(a) => {
                assert_eq!(bare_ats(&a), 1, "{input:?} -> {a:?}");
                assert!(!a.chars().any(char::is_control), "{input:?} -> {a:?}");
                assert_eq!(
                    single_address(input).as_deref(),
                    Some(a.as_str()),
                    "{input:?}"
                );
                assert_eq!(parse_address_list(input), vec![a.clone()], "{input:?}");
                // The normalized form reads back as itself.
                assert_eq!(from_identity(&a), One(a.clone()), "{input:?}");
                true
            }
            ShowsOther { address, .. } => {
                assert_eq!(bare_ats(&address), 1, "{input:?}");
                assert_eq!(single_address(input).as_deref(), Some(address.as_str()));
                assert_eq!(parse_address_list(input), vec![address]);
                false
            }
            Ambiguous(_) => {
                assert_eq!(single_address(input), None, "{input:?}");
                false
            }
        }
    }

    #[test]
    fn random_inputs_keep_the_invariants() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let chars = [
            'a', 'b', 'x', '@', '@', '.', '<', '>', '"', '(', ')', ',', ':', ';', '\\', ' ', '\t',
            '=', '?', '[', ']', '_', 'q', 'B', '4', '0', '\r', '\0', '\u{FF20}', 'é', '\u{FFFD}',
            '\u{202E}',
        ];
        let pieces = [
            "alice",
            "Bob",
            "@",
            "@",
            "example.com",
            "x.test",
            ".",
            "<",
            ">",
            "\"",
            "(",
            ")",
            ",",
            ":",
            ";",
            " ",
            " ",
            "\\",
            "=?utf-8?q?",
            "=?utf-8?b?",
            "=40",
            "QA==",
            "?=",
            "ceo",
            "[192.0.2.1]",
            "\u{FF20}",
            "\t",
            "\r",
            "\"x y\"",
        ];
        // Mostly well-formed: a mailbox with random parts around it.
        let names = [
            "",
            "",
            "Alice ",
            "\"Smith, A\" ",
            "(c) ",
            "=?utf-8?q?J=40?= ",
            "ceo@x ",
            "John Q. ",
            "a.",
            "\"",
            "\t",
        ];
        let locals = [
            "alice",
            "\"x y\"",
            "a.b",
            "\"q\\\"\"",
            "\"ok\"",
            "é",
            "=?u?q?x?=",
            "a b",
            "",
        ];
        let domains = [
            "example.com",
            "x.test",
            "[192.0.2.1]",
            "EXAMPLE.org.",
            "bücher.example",
            "a..b",
            "",
        ];
        let tails = ["", "", " (c)", " ", "(x@y)", ",", " b", ">", "\r"];
        let mut ones = 0;
        for round in 0..20_000 {
            let mut s = String::new();
            match round % 3 {
                0 => {
                    for _ in 0..next(24) {
                        s.push(chars[next(chars.len())]);
                    }
                }
                1 => {
                    for _ in 0..=next(8) {
                        s.push_str(pieces[next(pieces.len())]);
                    }
                }
                _ => {
                    let angle = next(2) == 0;
                    s.push_str(names[next(names.len())]);
                    if angle {
                        s.push('<');
                    }
                    s.push_str(locals[next(locals.len())]);
                    s.push('@');
                    s.push_str(domains[next(domains.len())]);
                    if angle {
                        s.push('>');
                    }
                    s.push_str(tails[next(tails.len())]);
                }
            }
            if check_invariants(&s) {
                ones += 1;
            }
        }
        assert!(ones > 500, "only {ones} inputs gave one mailbox");
    }

    #[test]
    fn a_quoted_local_part_with_an_address_shows_another() {
        assert_eq!(
            from_identity("\"ceo@bank.example\"@evil.example"),
            shows("\"ceo@bank.example\"@evil.example", "quoted local part")
        );
    }

    #[test]
    fn unreadable_charsets_and_look_alikes_fail_closed() {
        // `ceo@bank.example` in EBCDIC (cp037): `@` is 0x7C there.
        let ebcdic =
            "=?cp037?q?=83=85=96=7C=82=81=95=92K=85=A7=81=94=97=93=85?= <alice@example.com>";
        assert_eq!(
            from_identity(ebcdic),
            shows("alice@example.com", "encoded word")
        );
        assert_eq!(
            from_identity("=?x-unknown?q?ceo?= <alice@example.com>"),
            shows("alice@example.com", "encoded word")
        );
        assert_eq!(
            from_identity("=?iso-8859-1?q?J=FCrgen?= <alice@example.com>"),
            FromIdentity::One("alice@example.com".into())
        );
        assert_eq!(
            from_identity("\"ceo\u{24D0}bank.example\" <alice@example.com>"),
            shows("alice@example.com", "display name")
        );
    }
}
