#!/bin/bash
# Builds the verification corpus: signed messages made by independent
# implementations (openssl smime, openssl cms, gpgsm) from the test PKI, and
# broken variants, each with its expected smime result in MANIFEST.tsv:
#   file <TAB> expected result <TAB> text the header comment must contain (or -)
# Usage: make-corpus.sh PKIDIR OUTDIR   (PKIDIR from tests/pki/make-pki.sh)
set -euo pipefail
pki=$(cd "${1:?usage: make-corpus.sh PKIDIR OUTDIR}" && pwd)
out=${2:?usage: make-corpus.sh PKIDIR OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
export GNUPGHOME=$work/gnupg
cleanup() { gpgconf --kill all >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
manifest=$out/MANIFEST.tsv
: > "$manifest"
expect() { printf '%s\t%s\t%s\n' "$1" "$2" "${3:--}" >> "$manifest"; }

date_now=$(date -R)
headers() { # headers FROM SUBJECT
    printf 'From: %s\nTo: Bob <bob@example.net>\nSubject: %s\nDate: %s\nMessage-ID: <%s@corpus.example>\nMIME-Version: 1.0\n' \
        "$1" "$2" "$date_now" "$(echo "$2" | tr -c 'a-zA-Z0-9\n' '-')"
}
entity() { # a text/plain MIME entity, LF line ends
    printf 'Content-Type: text/plain; charset=us-ascii\n\nThis message was signed by an independent implementation.\nIt has a few lines.\n-- \nThe corpus\n'
}
# osign NAME FROM SIGNER [openssl cms options...]: clear-signed by openssl cms
osign() {
    local name=$1 from=$2 signer=$3; shift 3
    entity > e.txt
    { headers "$from" "$name"; openssl cms -sign -signer "$pki/$signer.crt" -inkey "$pki/$signer.key" \
        -certfile "$pki/inter.crt" -in e.txt "$@"; } > "$out/$name.eml"
}

# --- good signatures ---------------------------------------------------------
# (An RSA-PSS key needs -keyopt rsa_padding_mode:pss: without it OpenSSL 3.0
# labels the PSS signature rsaEncryption and nothing, itself included, verifies it.)
entity > e.txt
{ headers alice@example.com openssl-smime-rsa2048; openssl smime -sign -signer "$pki/alice.crt" -inkey "$pki/alice.key" \
    -certfile "$pki/inter.crt" -in e.txt; } > "$out/openssl-smime-rsa2048.eml"
expect openssl-smime-rsa2048.eml pass
osign openssl-cms-rsa3072 carol@example.com carol -md sha256
expect openssl-cms-rsa3072.eml pass
osign openssl-cms-p256 bob@example.com bob -md sha256
expect openssl-cms-p256.eml pass
osign openssl-cms-p384 dave@example.net dave -md sha384
expect openssl-cms-p384.eml pass
osign openssl-cms-rsa-pss pss@example.com pss -md sha256 -keyopt rsa_padding_mode:pss
expect openssl-cms-rsa-pss.eml pass
osign openssl-cms-rsa-pss-padding alice@example.com alice -md sha256 -keyopt rsa_padding_mode:pss
expect openssl-cms-rsa-pss-padding.eml pass
osign openssl-cms-sha512 alice@example.com alice -md sha512
expect openssl-cms-sha512.eml pass
osign openssl-cms-opaque carol@example.com carol -md sha256 -nodetach
expect openssl-cms-opaque.eml pass
# From with a display name and the address in another case in the domain.
osign display-name '"Alice A." <alice@EXAMPLE.com>' alice -md sha256
expect display-name.eml pass

# openssl smime writes application/x-pkcs7-signature; make a variant with an
# unquoted boundary, a one-line base64 signature and CRLF line ends.
python3 - "$out/openssl-smime-rsa2048.eml" "$out/unquoted-oneline-crlf.eml" <<'PY'
import re, sys
m = open(sys.argv[1], 'rb').read().decode()
b = re.search(r'boundary="([^"]+)"', m).group(1)
nb = 'plainBoundary42'
m = m.replace('boundary="%s"' % b, 'boundary=' + nb).replace('--' + b, '--' + nb)
head, sep, rest = m.partition('Content-Disposition: attachment; filename="smime.p7s"\n\n')
sig, tail = rest.split('\n\n--' + nb + '--', 1)
m = head + sep + sig.replace('\n', '') + '\n\n--' + nb + '--' + tail
m = m.replace('Subject: openssl-smime-rsa2048', 'Subject: unquoted-oneline-crlf')
open(sys.argv[2], 'wb').write(m.replace('\r\n', '\n').replace('\n', '\r\n').encode())
PY
expect unquoted-oneline-crlf.eml pass

# gpgsm: import alice (3DES PKCS#12: GnuPG 2.2 does not read OpenSSL 3's
# AES-protected files), trust the root, sign detached and opaque.
mkdir -m 700 "$GNUPGHOME"
echo allow-loopback-pinentry > "$GNUPGHOME/gpg-agent.conf"
printf 'disable-crl-checks\ndisable-policy-checks\n' > "$GNUPGHOME/gpgsm.conf"
fpr=$(openssl x509 -in "$pki/root.crt" -noout -fingerprint -sha1 | cut -d= -f2)
echo "$fpr S relax" > "$GNUPGHOME/trustlist.txt"
# quiet CMD...: runs CMD with its standard error kept back, shown if it fails.
quiet() {
    local err
    if ! err=$("$@" 2>&1 >/dev/null); then
        printf 'make-corpus.sh: %s failed:\n%s\n' "$*" "$err" >&2
        exit 1
    fi
}
quiet gpgsm --batch -q --import "$pki/root.crt" "$pki/inter.crt"
# GnuPG 2.2 derives a wrong 3DES key from about one PKCS#12 salt in 128
# (string_to_key in sm/minip12.c: gcry_mpi_print drops a leading zero byte of
# the updated 64-byte block), and then fails on that file with every
# passphrase. OpenSSL salts the certificate and key bags at random, so about
# 1.5% of its files never import: make a freshly salted file until one does.
p12_tries=20 p12_ok=
for try in $(seq 1 $p12_tries); do
    openssl pkcs12 -export -inkey "$pki/alice.key" -in "$pki/alice.crt" -certfile "$pki/inter.crt" -out alice.p12 \
        -passout pass:corpus -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1
    if p12_err=$(echo corpus | gpgsm --batch -q --pinentry-mode loopback --passphrase-fd 0 --import alice.p12 2>&1 >/dev/null); then
        p12_ok=1
        break
    fi
    gpgconf --kill gpg-agent >/dev/null 2>&1 || true
done
if [ -z "$p12_ok" ]; then
    printf 'make-corpus.sh: gpgsm --import failed for %s freshly salted alice.p12 files; the last said:\n%s\n' \
        "$p12_tries" "$p12_err" >&2
    exit 1
fi
entity | sed 's/$/\r/' > e.crlf
echo corpus | quiet gpgsm --batch -q --pinentry-mode loopback --passphrase-fd 0 -u alice@example.com \
    --include-certs -1 --detach-sign --base64 -o e.sig e.crlf
{
    headers alice@example.com gpgsm-clear
    printf 'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;\n\tboundary="gpgsm-b"\n\n'
    printf 'This is a signed message.\n\n--gpgsm-b\n'
    cat e.crlf
    printf '\n--gpgsm-b\nContent-Type: application/pkcs7-signature; name=smime.p7s\nContent-Transfer-Encoding: base64\n\n'
    grep -v -- '-----' e.sig
    printf '\n--gpgsm-b--\n'
} > "$out/gpgsm-clear.eml"
expect gpgsm-clear.eml pass
echo corpus | quiet gpgsm --batch -q --pinentry-mode loopback --passphrase-fd 0 -u alice@example.com \
    --include-certs -1 --sign --base64 -o e.p7m e.crlf
{
    headers alice@example.com gpgsm-opaque
    printf 'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"\n'
    printf 'Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename="smime.p7m"\n\n'
    grep -v -- '-----' e.p7m
} > "$out/gpgsm-opaque.eml"
expect gpgsm-opaque.eml pass

# A signed entity holding a multipart nested 300 levels deep: the signature
# covers it as bytes; verification does not need to walk it.
python3 - > deep.txt <<'PY'
n = 300
s = 'Content-Type: text/plain\n\ninnermost\n'
for i in reversed(range(n)):
    s = 'Content-Type: multipart/mixed; boundary="d%d"\n\n--d%d\n%s\n--d%d--\n' % (i, i, s, i)
print(s, end='')
PY
{ headers alice@example.com deep-nesting; openssl cms -sign -signer "$pki/alice.crt" -inkey "$pki/alice.key" \
    -certfile "$pki/inter.crt" -in deep.txt -md sha256; } > "$out/deep-nesting.eml"
expect deep-nesting.eml pass

# A valid signature and a forged Authentication-Results claiming our id.
{ printf 'Authentication-Results: mx.corpus.test; smime=pass body.smime-identifier=ceo@example.com\n'
  sed 's/^Subject: openssl-cms-p256/Subject: forged-ar/' "$out/openssl-cms-p256.eml"; } > "$out/forged-ar.eml"
expect forged-ar.eml pass

# --- bad signatures ------------------------------------------------------------
sed 's/^It has a few lines\./It has a few lines!/' "$out/openssl-cms-rsa3072.eml" > "$out/body-changed.eml"
expect body-changed.eml fail "signature does not match content"
python3 - "$out/openssl-cms-rsa3072.eml" "$out/boundary-changed.eml" <<'PY'
import re, sys
m = open(sys.argv[1]).read()
b = re.search(r'boundary="([^"]+)"', m).group(1)
open(sys.argv[2], 'w').write(m.replace('boundary="%s"' % b, 'boundary="%sX"' % b, 1))
PY
expect boundary-changed.eml permerror "boundary not found"
osign untrusted-ca eve@example.com eve -md sha256
expect untrusted-ca.eml fail "untrusted issuer"
{ entity > e.txt; headers expired@example.com expired-cert; openssl cms -sign -signer "$pki/expired.crt" \
    -inkey "$pki/expired.key" -certfile "$pki/inter.crt" -in e.txt -md sha256; } > "$out/expired-cert.eml"
expect expired-cert.eml fail "certificate expired"
osign no-email-protection web@example.com web -md sha256
expect no-email-protection.eml fail "not for email protection"
osign no-signing-key-usage nosig@example.com nosig -md sha256
expect no-signing-key-usage.eml fail "key usage does not allow signing"
osign signer-not-from mallory@example.com alice -md sha256
expect signer-not-from.eml policy "signer not From"
osign sha1 alice@example.com alice -md sha1
expect sha1.eml policy "weak digest sha1"
osign weak-rsa-1024 weaksig@example.com weaksig -md sha256
expect weak-rsa-1024.eml policy "weak key"
python3 - "$out/openssl-cms-p256.eml" "$out" <<'PY'
import re, sys
m = open(sys.argv[1]).read()
out = sys.argv[2]
head, sep, rest = m.partition('filename="smime.p7s"\n\n')
sig, tail = rest.split('\n\n', 1)
lines = sig.split('\n')
def put(name, text):
    open('%s/%s.eml' % (out, name), 'w').write(text.replace('Subject: openssl-cms-p256', 'Subject: ' + name))
put('truncated-signature', head + sep + '\n'.join(lines[:len(lines) // 2]) + '\n\n' + tail)
put('non-der-signature', head + sep + 'VGhpcyBpcyBub3QgREVSIGF0IGFsbCwganVzdCB0ZXh0Lg==' + '\n\n' + tail)
put('not-base64-signature', head + sep + '!!!! not base64 ****' + '\n\n' + tail)
b = re.search(r'boundary="([^"]+)"', m).group(1)
first = m.index('--' + b)
second = m.index('--' + b, first + 1)
put('one-part', m[:second] + '--' + b + '--\n')
put('date-skew', m.replace('Date: ', 'Date: Mon, 01 Jan 2024 00:00:00 +0000\nX-Old-Date: ', 1))
PY
expect truncated-signature.eml permerror "signature not DER"
expect non-der-signature.eml permerror "signature not DER"
expect not-base64-signature.eml permerror "signature not base64"
expect one-part.eml permerror "multipart/signed with 1 parts"
expect date-skew.eml policy "signing time far from Date"

# Opaque signed-data that is not DER.
{ headers alice@example.com opaque-garbage
  printf 'Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\nContent-Transfer-Encoding: base64\n\n'
  printf 'MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0B\n'; } > "$out/opaque-garbage.eml"
expect opaque-garbage.eml permerror "signature not DER"

# Not signed at all: no smime result.
{ headers alice@example.com unsigned; entity; } > "$out/unsigned.eml"
expect unsigned.eml none

echo "corpus: $(wc -l < "$manifest") messages in $out"
