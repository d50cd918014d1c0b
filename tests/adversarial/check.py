#!/usr/bin/env python3
"""Checks delivered messages against the adversarial corpus's manifest.

Usage: check.py MANIFEST OUTDIR DELIVERED_DIR

Each delivered message is read twice: by Python's `email` package with
policy.default (as a mail reader would: it splits lines at CR, LF and CRLF)
and by a lax line reader that also takes `Name :` fields and names in any
case. In both views there must be exactly one Authentication-Results whose
authserv-id, read as doc/inbound-verdicts.md section 8 says a reader could
read it, is ours (none for expected `none`), with the expected smime result
and comment; and the expected X-SMIME-Decrypted state. Our own fields must be
ASCII, properly folded, without CR/NUL, no line over 998 octets.
"""
import email
import email.policy
import os
import re
import sys

AUTHSERV = 'mx.adversarial.test'
# Invisible characters a reader does not show (doc section 8).
INVISIBLE = set([0xAD, 0x34F, 0x61C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFEFF, 0xFFA0]
                + list(range(0x180B, 0x1810)) + list(range(0x200B, 0x2010)) + list(range(0x202A, 0x202F))
                + list(range(0x2060, 0x2070)) + list(range(0xFE00, 0xFE10)))


def strip_comments(s):
    out, depth, i = [], 0, 0
    while i < len(s):
        ch = s[i]
        if ch == '\\' and depth and i + 1 < len(s):
            i += 2
            continue
        if ch == '(':
            depth += 1
        elif ch == ')' and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
        i += 1
    return ''.join(out)


def authserv_id(value):
    """The authserv-id as a lenient reader takes it: comments, white space,
    invisible characters, quotes, a trailing version number and trailing
    dots ignored, lower case."""
    v = strip_comments(value).split(';', 1)[0]
    v = ''.join(ch for ch in v if ord(ch) not in INVISIBLE)
    words = v.split()
    if len(words) > 1 and words[-1].isdigit():
        words = words[:-1]
    v = ''.join(words).replace('"', '')
    if not v.isascii():
        # As a reader resolves a domain (IDNA: full-width letters and
        # ideographic full stops map to ASCII).
        try:
            v = v.encode('idna').decode('ascii')
        except UnicodeError:
            pass
    return v.rstrip('.').lower()


def is_ours(value):
    return authserv_id(value) == AUTHSERV


def smime_result(value):
    m = re.search(r'\bsmime\s*=\s*([A-Za-z]+)', strip_comments(value).split(';', 1)[-1])
    return m.group(1).lower() if m else None


def to_text(v):
    if isinstance(v, bytes):
        return v.decode('utf-8', 'replace')
    return v.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')


def split_message(data):
    """Header block and body, after normalising CRLF to LF (bare CRs stay)."""
    data = data.replace(b'\r\n', b'\n')
    head, sep, body = data.partition(b'\n\n')
    return head, body


def lax_fields(head):
    """(name, unfolded value, raw lines) of a header block, lines split at
    CR, LF and CRLF, names stripped of white space before the colon."""
    fields = []
    for line in re.split(rb'\r\n|\r|\n', head):
        if line[:1] in (b' ', b'\t') and fields:
            fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(b':')
        if not colon:
            fields.append([None, [line]])
            continue
        fields.append([name.strip().decode('latin-1').lower(), [line]])
    out = []
    for name, lines in fields:
        if name is None:
            continue
        value = b''.join(lines).split(b':', 1)[1]
        out.append((name, to_text(value).strip(), lines))
    return out


def raw_fields(data):
    """(name, raw bytes of the field incl. folding) split at LF only: the
    bytes as we wrote them."""
    head, _ = split_message(data.replace(b'\r\n', b'\n'))
    fields = []
    for line in head.split(b'\n'):
        if line[:1] in (b' ', b'\t') and fields:
            fields[-1][1] += b'\n' + line
        else:
            fields.append([line.split(b':', 1)[0].strip().lower(), line])
    return fields


def check_our_field(label, raw):
    """Our own field: printable ASCII, folded with LF + tab/space, no blank
    continuation, no line over 998 octets."""
    errs = []
    for i, line in enumerate(raw.split(b'\n')):
        if len(line) > 998:
            errs.append('%s: line of %d octets' % (label, len(line)))
        if any(b < 0x20 and b != 0x09 or b > 0x7e for b in line):
            errs.append('%s: control or non-ASCII byte: %r' % (label, line[:200]))
        if i and not line.strip():
            errs.append('%s: blank continuation line' % label)
    return errs


def main():
    manifest, outdir, delivered = sys.argv[1:4]
    cases = [l.rstrip('\n').split('\t') for l in open(manifest, encoding='utf-8') if l.strip()]
    failures = []
    bad = set()
    failed_values = {}
    for f in cases:
        fname, exp_smime, exp_dec, comment, cls, desc = f[:6]
        errs = []
        path = os.path.join(delivered, fname)
        if not os.path.exists(path):
            if not desc.startswith('tempfail:'):
                failures.append('%s [class %s]: not delivered (%s)' % (fname, cls, desc))
                bad.add(fname)
            continue
        data = open(path, 'rb').read()
        original = open(os.path.join(outdir, fname), 'rb').read()
        msg = email.message_from_bytes(data, policy=email.policy.default)
        head, body = split_message(data)

        # Reader's view (Python email): values unfolded.
        reader = []
        for name, value in msg.raw_items():
            v = to_text(''.join(re.split(r'\r\n|\r|\n', str(value))))
            if '\r' in v or '\n' in v or '\x00' in v:
                errs.append('header %s holds CR/LF/NUL after unfolding: %r' % (name, v[:120]))
            reader.append((name.strip().lower(), v))
        lax = [(n, v) for n, v, _ in lax_fields(head)]
        for view, fields in [('reader', reader), ('lax', lax)]:
            ars = [v for n, v in fields if n == 'authentication-results' and is_ours(v)]
            decs = [v for n, v in fields if n == 'x-smime-decrypted']
            if exp_smime == 'none':
                if ars:
                    errs.append('%s: expected no A-R of ours, got %r' % (view, ars))
            elif len(ars) != 1:
                errs.append('%s: expected one A-R of ours (smime=%s), got %d: %r' % (view, exp_smime, len(ars), ars))
            else:
                got = smime_result(ars[0])
                if got != exp_smime:
                    errs.append('%s: smime=%s, expected %s: %r' % (view, got, exp_smime, ars[0]))
                if comment != '-' and comment not in ars[0]:
                    errs.append('%s: comment %r missing: %r' % (view, comment, ars[0]))
                # What no signature covers is not copied out of CBC plaintext.
                if desc.startswith('no-content-description:') and any(
                        n == 'content-description' for n, _ in fields):
                    errs.append('%s: an unsigned Content-Description was copied out' % view)
                # A failure names its signer: by address, or by serial and
                # issuer where the address cannot be written safely.
                named = 'body.smime-identifier=' in ars[0] or (
                    'body.smime-serial=' in ars[0] and 'body.smime-issuer=' in ars[0])
                if exp_smime == 'fail' and desc.startswith('names-signer:') and not named:
                    errs.append('%s: fail that does not name the signer: %r' % (view, ars[0]))
            if exp_dec == '-':
                if decs:
                    errs.append('%s: expected no X-SMIME-Decrypted, got %r' % (view, decs))
            elif len(decs) != 1:
                errs.append('%s: expected one X-SMIME-Decrypted %s, got %r' % (view, exp_dec, decs))
            else:
                first = re.split(r'[\s;(]', decs[0].strip(), 1)[0]
                if first != exp_dec:
                    errs.append('%s: X-SMIME-Decrypted %r, expected %s' % (view, decs[0], exp_dec))
                elif exp_dec == 'failed' and view == 'reader':
                    failed_values[fname] = decs[0]

        # Our own fields, byte for byte.
        for name, raw in raw_fields(data):
            if name == b'x-smime-decrypted' or (name == b'authentication-results'
                                                 and is_ours(to_text(raw.split(b':', 1)[-1]))):
                errs += check_our_field(name.decode(), raw)

        # The body: released only for `yes`, otherwise untouched.
        if exp_dec == 'yes':
            ct = msg.get_content_type()
            st = (msg.get_param('smime-type') or '').lower() if ct.endswith('pkcs7-mime') else ''
            if ct.endswith('pkcs7-mime') and st != 'signed-data':
                errs.append('decrypted, yet still %s; smime-type=%s' % (ct, st))
            if not body.strip():
                errs.append('decrypted to an empty body')
            for line in head.split(b'\n'):
                if len(line) > 998:
                    errs.append('header line of %d octets after decryption' % len(line))
            for line in head.split(b'\n')[1:]:
                if line[:1] in (b' ', b'\t') and not line.strip():
                    errs.append('blank continuation line in the header after decryption')
        else:
            _, obody = split_message(original)
            if body.rstrip(b'\n') != obody.rstrip(b'\n'):
                errs.append('body changed (%d -> %d bytes)' % (len(obody), len(body)))

        if errs:
            failures.extend('%s [class %s, %s]: %s' % (fname, cls, desc, e) for e in errs)
            bad.add(fname)

    # Every decryption failure looks the same (no oracle).
    distinct = sorted(set(failed_values.values()))
    if len(distinct) > 1:
        failures.append('X-SMIME-Decrypted failed values differ (an oracle): %r' % distinct)
        bad.update(failed_values)
    for l in failures:
        print(l)
    print('adversarial: %d passed, %d failed' % (len(cases) - len(bad), len(bad)))
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
