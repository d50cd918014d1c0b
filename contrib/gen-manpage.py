#!/usr/bin/env python3
"""Writes doc/smime-milter.toml.5 from contrib/smime-milter.toml: every key of
the sample configuration, with the comment above it, becomes an entry of the
manual page, so the two cannot drift apart (tests check the keys of both
against the code's list, and render the page with man(1)).

    python3 contrib/gen-manpage.py > doc/smime-milter.toml.5

How the sample is read (blocks are separated by blank lines):
  - "# ----" starts a topic: a one-line title becomes a section (.SH), other
    text introduces the table that follows (or the keys, if no table does);
  - a table header ("[t]", "#[t]", "[[t]]") starts a subsection named exactly
    as written, brackets included; the comment above it describes the table;
  - "#key = value" with a comment above it is an entry; keys following it
    without a comment of their own share it (user and group);
  - a table header directly followed by keys is an example, shown verbatim
    (uncommented), as are comment lines indented further ("#   text");
  - "# term   text" lines with aligned text are a list of terms.
Paths of the source tree are replaced by where the packages install the
files; any other source path is an error.
"""
import re
import sys
from pathlib import Path

SAMPLE = Path(__file__).with_name("smime-milter.toml")

# Source-tree path -> installed path (packaging/debian/rules, .docs).
INSTALLED = [
    ("contrib/smime-milter.toml", "/etc/smime-milter/smime-milter.toml"),
    ("contrib/sendmail/smime-milter.mc", "/usr/share/doc/smime-milter/examples/sendmail.mc"),
    ("postfix-sample/main.cf", "/usr/share/doc/smime-milter/examples/postfix-main.cf"),
    ("postfix-sample/master.cf", "/usr/share/doc/smime-milter/examples/postfix-master.cf"),
    ("postfix-sample/", "/usr/share/doc/smime-milter/examples/"),
    ("doc/inbound-verdicts.md", "/usr/share/doc/smime-milter/inbound-verdicts.md"),
]
SOURCE_PATH = re.compile(r"(?<![\w/.-])(contrib|doc|postfix-sample|src|tests|packaging)/")

RULE = re.compile(r"^#\s*-{3,}\s*$")
HEADER = re.compile(r"^#?\s*(\[\[?[a-z0-9_.]+\]\]?)\s*$")
KEY = re.compile(r"^#?([a-z0-9_]+) = (.*)$")
TERM = re.compile(r"^(\S+)( +)(\S.*)$")


def fail(msg):
    sys.exit("gen-manpage: %s" % msg)


def installed(text):
    for src, dst in INSTALLED:
        text = re.sub(r"(?<![\w/.-])" + re.escape(src), dst, text)
    m = SOURCE_PATH.search(text)
    if m:
        fail("source-tree path in %r: map it to its installed path" % text)
    return text


def esc(text):
    """Escapes text for troff: no character of it is taken for a request,
    an escape, a hyphen or a typographic quote."""
    text = installed(text)
    out = []
    for ch in text:
        out.append({
            "\\": "\\(rs",
            "-": "\\-",
            "'": "\\(aq",
            "`": "\\(ga",
            '"': "\\(dq",
            "^": "\\(ha",
            "~": "\\(ti",
        }.get(ch, ch))
    return "".join(out)


def text_line(s):
    """A text line of the page: never read as a request or macro."""
    return "\\&" + s if s.startswith((".", "'")) else s


def prose(text):
    """Escaped prose; `code` becomes bold."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        fail("unbalanced ` in %r" % text)
    return "".join(
        esc(p) if i % 2 == 0 else "\\fB%s\\fR" % esc(p) for i, p in enumerate(parts)
    )


def title_arg(text):
    return '"%s"' % esc(text)


def comment_text(raw):
    """The text of a comment line, without "#" and the one space after it."""
    t = raw[1:]
    return t[1:] if t.startswith(" ") else t


def segments(texts):
    """Splits comment texts into ("para", [lines]), ("literal", [lines]) and
    ("terms", [(term, [lines])]) segments."""
    segs = []
    i = 0
    while i < len(texts):
        t = texts[i]
        m = TERM.match(t)
        if t == "":
            i += 1
            continue
        if m and len(m.group(2)) >= 2:
            col = len(m.group(1)) + len(m.group(2))
            items = []
            while i < len(texts):
                t = texts[i]
                m = TERM.match(t)
                if m and len(m.group(1)) + len(m.group(2)) == col and (
                    len(m.group(2)) >= 2 or m.group(1).endswith(":")
                ):
                    items.append((m.group(1), [m.group(3)]))
                elif items and re.match(r"^ {%d}\S" % col, t):
                    items[-1][1].append(t.strip())
                else:
                    break
                i += 1
            segs.append(("terms", items))
        elif t.startswith("  "):
            lines = []
            while i < len(texts) and (
                texts[i].startswith("  ")
                or (texts[i] == "" and i + 1 < len(texts) and texts[i + 1].startswith("  "))
            ):
                lines.append(texts[i])
                i += 1
            segs.append(("literal", dedent(lines)))
        else:
            lines = []
            while i < len(texts) and texts[i] != "" and not texts[i].startswith(" "):
                m = TERM.match(texts[i])
                if lines and m and len(m.group(2)) >= 2:
                    break
                lines.append(texts[i])
                i += 1
            segs.append(("para", lines))
    return segs


def dedent(lines):
    n = min(len(l) - len(l.lstrip(" ")) for l in lines if l)
    return [l[n:] for l in lines]


def literal(lines, nested=False):
    """Lines shown as written, indented 4 more than the text around them."""
    out = [".RS", ".RS 4"] if nested else [".RS 4"]
    out += [".EX"] + [text_line(esc(l)) for l in lines] + [".EE"]
    out += [".RE", ".RE"] if nested else [".RE"]
    return out


class Page:
    def __init__(self):
        self.out = []
        self.section = None  # the table the keys belong to
        self.pending = []  # text of an untitled topic, for the next table
        self.entry = None  # (tags, description) of the key entry being read

    def emit(self, *lines):
        self.out.extend(lines)

    def body(self, texts, nested):
        """Comment texts as paragraphs, examples and lists; nested: inside
        an entry (.TP), whose indentation they keep."""
        first = True
        for kind, content in segments(texts):
            if kind == "para":
                if not (nested and first):
                    self.emit(".IP" if nested else ".PP")
                self.emit(*(text_line(prose(l.strip())) for l in content))
            elif kind == "literal":
                if not (nested and first):
                    self.emit(".IP" if nested else ".PP")
                self.emit(*literal(content, nested))
            else:
                if nested:
                    self.emit(".RS")
                width = max(len(term) for term, _ in content) + 2
                for n, (term, lines) in enumerate(content):
                    # A compact list: space before its first term only.
                    self.emit(".TP %dn" % width, text_line("\\fB%s\\fR" % esc(term)))
                    self.emit(*(text_line(prose(l)) for l in lines))
                    if n == 0:
                        self.emit(".PD 0")
                self.emit(".PD")
                if nested:
                    self.emit(".RE")
            first = False
        return first

    def flush_entry(self):
        if self.entry:
            tags, desc = self.entry
            for n, (key, value) in enumerate(tags):
                self.emit(".TP" if n == 0 else ".TQ")
                self.emit("\\fB%s\\fR = %s" % (esc(key), esc(value)))
            if self.body(desc, nested=True):
                self.emit("(No description.)")
            self.entry = None

    def flush_pending(self):
        if self.pending:
            self.body(self.pending, nested=False)
            self.pending = []

    def table(self, header):
        if header != self.section:
            self.section = header
            self.emit(".SS " + title_arg(header))
        self.flush_pending()

    def topic(self, raws):
        texts = [comment_text(r) for r in raws]
        if texts and not texts[0].endswith(".") and (len(texts) == 1 or texts[1] == ""):
            self.flush_pending()
            self.emit(".SH " + title_arg(texts[0].upper()))
            self.section = None
            self.body(texts[2:], nested=False)
        else:
            self.flush_pending()
            self.pending = texts

    def block(self, raws):
        kinds = []
        for r in raws:
            if HEADER.match(r):
                kinds.append("header")
            elif KEY.match(r):
                kinds.append("key")
            elif r.startswith("#"):
                kinds.append("comment")
            else:
                fail("cannot read line %r" % r)
        if "header" not in kinds or kinds.index("header") > (
            kinds.index("key") if "key" in kinds else len(kinds)
        ):
            self.flush_pending()
        comments = []
        i = 0
        while i < len(raws):
            r, kind = raws[i], kinds[i]
            if kind == "comment":
                self.flush_entry()
                comments.append(comment_text(r))
                i += 1
            elif kind == "header":
                self.flush_entry()
                header = HEADER.match(r).group(1)
                if header != self.section:
                    self.table(header)
                self.body(comments, nested=False)
                comments = []
                if i + 1 < len(raws) and kinds[i + 1] == "key":
                    # An example: the header and its keys, as written.
                    lines = []
                    while i < len(raws) and kinds[i] in ("header", "key", "comment"):
                        if kinds[i] == "comment":
                            if comment_text(raws[i]) != "" or i + 1 >= len(raws) or kinds[i + 1] != "header":
                                break
                        lines.append(raws[i].lstrip("#"))
                        i += 1
                    self.emit(".PP")
                    self.emit(*literal(lines))
                else:
                    i += 1
            else:
                m = KEY.match(r)
                key, value = m.group(1), m.group(2)
                inline = re.search(r"\s+#\s", value)
                extra = []
                if inline:
                    value, extra = value[: inline.start()], [value[inline.end():]]
                if comments or self.entry is None:
                    self.flush_entry()
                    while comments and comments[0] == "":
                        comments.pop(0)
                    self.entry = ([], comments + extra)
                    comments = []
                else:
                    self.entry[1].extend(extra)
                self.entry[0].append((key, value))
                i += 1
        self.flush_entry()
        self.body(comments, nested=False)


def main():
    raws = SAMPLE.read_text().splitlines()
    blocks, cur = [], []
    for r in raws:
        if r.strip():
            cur.append(r.rstrip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)

    page = Page()
    page.emit(
        '.TH SMIME\\-MILTER.TOML 5 "2026-11-28" "smime\\-milter" "File formats"',
        ".\\\" Generated by contrib/gen-manpage.py from the sample configuration: do not edit.",
        ".\\\" No hyphenation (.EE restores HY), no justification: header names,",
        ".\\\" paths and keys read as written.",
        ".nr HY 0",
        ".nh",
        ".ad l",
        ".SH NAME",
        "smime\\-milter.toml \\- configuration file of smime\\-milter",
        ".SH SYNOPSIS",
        ".I /etc/smime\\-milter/smime\\-milter.toml",
        ".SH DESCRIPTION",
        "The configuration of",
        ".BR smime\\-milter (8)",
        "is one TOML file, by default",
        ".IR /etc/smime\\-milter/smime\\-milter.toml .",
        "It is read at start and on SIGUSR1; unknown keys, bad values and missing",
        "or unsafe files are errors that name the file, the line and the key",
        "(exit status 78).",
        "Check a file with",
        ".B smime\\-milter \\-\\-check\\-config \\-c",
        ".IR file .",
        ".PP",
        "Every key is optional unless noted; each entry below shows its default.",
        "Keys listed before the first table header are top\\-level keys; the others",
        "belong to the table whose header (written as in the file, brackets",
        "included) heads their subsection.",
        "The installed configuration is the commented sample this page is made from.",
    )
    # The preamble (before the first "# ----") repeats DESCRIPTION.
    start = next(n for n, b in enumerate(blocks) if RULE.match(b[0]))
    for b in blocks[start:]:
        if RULE.match(b[0]):
            if any(not r.startswith("#") or HEADER.match(r) or KEY.match(r) for r in b[1:]):
                fail("a topic (# ----) holds only comments: %r" % b)
            page.topic(b[1:])
        else:
            page.block(b)
    page.flush_pending()
    page.emit(
        ".SH FILES",
        ".TP",
        ".I /etc/smime\\-milter/smime\\-milter.toml",
        "The configuration.",
        ".TP",
        ".I /usr/share/doc/smime\\-milter/inbound\\-verdicts.md",
        "Every rule of inbound verification, and the attack it stops.",
        ".TP",
        ".I /usr/share/doc/smime\\-milter/examples/",
        "Postfix (\\fIpostfix\\-main.cf\\fR, \\fIpostfix\\-master.cf\\fR) and Sendmail",
        "(\\fIsendmail.mc\\fR) settings.",
        ".SH SEE ALSO",
        ".BR smime\\-milter (8),",
        ".BR postconf (5)",
    )
    sys.stdout.write("\n".join(page.out) + "\n")


main()
