#!/usr/bin/env python3
"""Writes doc/smime-milter.toml.5 from contrib/smime-milter.toml: every key of
the sample configuration, with the comment above it, becomes an entry of the
manual page, so the two cannot drift apart (tests check the keys of both
against the code's list).

    python3 contrib/gen-manpage.py > doc/smime-milter.toml.5
"""
import re
import sys
from pathlib import Path

sample = Path(__file__).with_name("smime-milter.toml").read_text().splitlines()

def roff(text):
    return text.replace("\\", "\\e").replace("-", "\\-").replace("'", "\\(aq")

out = [
    '.TH SMIME-MILTER.TOML 5 "2026-11-28" "smime-milter" "File formats"',
    ".SH NAME",
    "smime-milter.toml \\- configuration file of smime-milter",
    ".SH DESCRIPTION",
    "The configuration of",
    ".BR smime-milter (8)",
    "is one TOML file, by default",
    ".IR /etc/smime-milter/smime-milter.toml .",
    "It is read at start and on SIGUSR1; unknown keys, bad values and missing",
    "or unsafe files are errors that name the file, the line and the key",
    "(exit status 78).",
    "Every key is optional; each entry below shows its default.",
    "The commented sample",
    ".I contrib/smime-milter.toml",
    "(installed as the default configuration) holds the same text.",
    ".SH KEYS",
]
comment = []
section = "(top level)"
in_prose = False
for line in sample:
    s = line.strip()
    table = re.match(r"^#?\s*\[\[?([a-z0-9_.]+)\]\]?\s*$", s)
    key = re.match(r"^#?([a-z_0-9]+) = (.*)$", s)
    if table:
        name = table.group(1)
        if name != section:
            section = name
            out.append(".SS [%s]" % name)
            for c in comment:
                out.append(roff(c) if c else ".PP")
        comment = []
    elif key and not s.startswith("# "):
        out.append(".TP")
        out.append("\\fB%s\\fR = %s" % (roff(key.group(1)), roff(key.group(2))))
        out.extend(roff(c) if c else ".br" for c in comment)
        comment = []
    elif s.startswith("#"):
        text = s[1:].strip()
        if set(text) <= {"-"} and text:
            comment = []
            continue
        comment.append(text)
    else:
        comment = []
out += [
    ".SH FILES",
    ".I /etc/smime-milter/smime-milter.toml",
    ".SH SEE ALSO",
    ".BR smime-milter (8)",
]
sys.stdout.write("\n".join(out) + "\n")
