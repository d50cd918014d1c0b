#!/bin/bash
# Builds the adversarial corpus of doc/inbound-verdicts.md: messages crafted
# to make the milter's verdict lie, one class per section of the rules, each
# with the verdict the rules give it. openssl makes the extra keys and
# certificates the attacks need (below); build.py makes the messages.
#
# Usage: make-adversarial.sh PKIDIR OUTDIR   (PKIDIR from tests/pki/make-pki.sh)
# Writes OUTDIR/*.eml and OUTDIR/MANIFEST.tsv, one line per message:
#   file  expected-smime  expected-decrypted  comment-substring  class  description  hdr|-
# (hdr: a header-level case, also sent through a real Postfix.)
set -euo pipefail
pki=$(cd "${1:?usage: make-adversarial.sh PKIDIR OUTDIR}" && pwd)
out=${2:?usage: make-adversarial.sh PKIDIR OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
x=$work/pki
mkdir -p "$x"
cd "$x"

# --- keys ---------------------------------------------------------------------
# One RSA-2048 key serves every certificate whose attack is in the certificate
# text, not in the key.
key() { # key NAME ALGORITHM [genpkey -pkeyopt ...]
    local name=$1 alg=$2; shift 2
    local opts=()
    for o in "$@"; do opts+=(-pkeyopt "$o"); done
    openssl genpkey -algorithm "$alg" "${opts[@]}" -out "$name.key" 2>/dev/null
}
key rsa2048 RSA rsa_keygen_bits:2048
key rsa1024 RSA rsa_keygen_bits:1024
key p224 EC ec_paramgen_curve:P-224
key p192 EC ec_paramgen_curve:prime192v1
key k256 EC ec_paramgen_curve:secp256k1
key p521 EC ec_paramgen_curve:P-521
key bp256 EC ec_paramgen_curve:brainpoolP256r1
openssl genpkey -genparam -algorithm DSA -pkeyopt dsa_paramgen_bits:2048 -out dsa.param 2>/dev/null
openssl genpkey -paramfile dsa.param -out dsa.key 2>/dev/null

# --- certificates ---------------------------------------------------------------
cat > ca.ext <<'X'
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
X

# The DER of a SubjectAltName holding rfc822Names with any bytes at all (CR,
# LF, NUL, quotes, UTF-8): openssl takes it as `subjectAltName = DER:hex`.
san_der() { # san_der PYTHON-BYTES-LITERAL...
    python3 - "$@" <<'PY'
import ast, sys
def tlv(tag, body):
    n = len(body)
    if n < 0x80:
        ln = bytes([n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, 'big')
        ln = bytes([0x80 | len(b)]) + b
    return bytes([tag]) + ln + body
names = b''.join(tlv(0x81, ast.literal_eval(a)) for a in sys.argv[1:])  # [1] rfc822Name
print(tlv(0x30, names).hex())
PY
}

# cert NAME KEY CA SUBJECT SAN-EXT-VALUE [MD] [EXTRA openssl x509 options]
# A certificate for KEY issued by CA (a basename with .crt/.key), e.g.
# cert weak rsa1024 $pki/inter '/CN=weak' 'email:weak@example.com' sha256
cert() {
    local name=$1 key=$2 ca=$3 subj=$4 san=$5 md=${6:-sha256}
    cat > "$name.ext" <<X
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = emailProtection
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
X
    openssl req -new -utf8 -key "$key.key" -subj "$subj" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -out "$name.crt" \
        -days 400 "-$md" -extfile "$name.ext" 2>/dev/null
    [ "$key" = "$name" ] || cp "$key.key" "$name.key"
    cat "$ca.crt" > "$name.chain"   # what the signer sends besides its own certificate
}
# ca NAME KEY ISSUER SUBJECT [MD]: an intermediate CA under ISSUER.
ca() {
    local name=$1 key=$2 issuer=$3 subj=$4 md=${5:-sha256}
    openssl req -new -utf8 -key "$key.key" -subj "$subj" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA "$issuer.crt" -CAkey "$issuer.key" -CAcreateserial -out "$name.crt" \
        -days 400 "-$md" -extfile ca.ext 2>/dev/null
    [ "$key" = "$name" ] || cp "$key.key" "$name.key"
}
# Local copies of the test CAs: -CAcreateserial writes CA.srl next to the
# CA, and several corpora may be built at once from one PKI.
cp "$pki/inter.crt" "$pki/inter.key" "$pki/root.crt" "$pki/root.key" .
inter=$x/inter
root=$x/root
org='/O=smime-milter adversarial'
AR='Authentication-Results: mx.adversarial.test; smime=pass'

# Class 1: certificate text that would break our header if copied raw.
cert san-crlf rsa2048 "$inter" "$org/CN=san-crlf" "DER:$(san_der "b'alice@example.com\r\n$AR'")"
cert san-lf rsa2048 "$inter" "$org/CN=san-lf" "DER:$(san_der "b'alice@example.com\n$AR'")"
cert san-cr rsa2048 "$inter" "$org/CN=san-cr" "DER:$(san_der "b'alice@example.com\r$AR'")"
cert san-nul rsa2048 "$inter" "$org/CN=san-nul" "DER:$(san_der "b'alice@example.com\x00.evil.example'")"
cert san-quote rsa2048 "$inter" "$org/CN=san-quote" \
    "DER:$(san_der "b'alice\"; smime=pass; x=(\\\\\"@example.com'")"
cert san-8bit rsa2048 "$inter" "$org/CN=san-8bit" "DER:$(san_der "b'\xc3\xa4lice@example.com'")"
cert san-long rsa2048 "$inter" "$org/CN=san-long" "email:$(printf 'l%.0s' $(seq 300))@example.com"
cert san-many rsa2048 "$inter" "$org/CN=san-many" \
    "$(for i in $(seq 60); do printf 'email:many%02d@example.org,' "$i"; done)email:hdrmany@example.com"
cert subj-crlf rsa2048 "$inter" "$org/CN=x"$'\r\n'"$AR" "email:hdrsubj@example.com"
cert subj-lf rsa2048 "$inter" "$org/CN=x"$'\n'"$AR" "email:hdrsubjlf@example.com"
cert subj-8bit rsa2048 "$inter" "$org/CN=Jürgen Müller ✉ 🔏/OU=Ärger" "email:hdrutf8@example.com"
cert subj-quote rsa2048 "$inter" "$org/CN=a\"; smime=pass (x\\\\) body.smime-identifier=ceo@example.com" \
    "email:hdrquote@example.com"
cert subj-long rsa2048 "$inter" \
    "$org$(for i in $(seq 25); do printf '/OU=%s%02d' "$(printf 'o%.0s' $(seq 58))" "$i"; done)/CN=long" \
    "email:hdrlong@example.com"
# An intermediate CA (under the root: the test intermediate has pathlen 0)
# whose name carries a forged header, and a good leaf under it.
ca evil-ca rsa2048 "$root" "$org/CN=Evil CA"$'\r\n'"$AR"
cert issuer-crlf rsa2048 evil-ca "$org/CN=issuer-crlf" "email:hdrissuer@example.com"

# Class 6: weak crypto anywhere in the chain, and controls that must pass.
cert dsa dsa "$inter" "$org/CN=dsa" "email:dsa@example.com"
cert p224 p224 "$inter" "$org/CN=p224" "email:p224@example.com"
cert p192 p192 "$inter" "$org/CN=p192" "email:p192@example.com"
cert k256 k256 "$inter" "$org/CN=k256" "email:k256@example.com"
cert p521 p521 "$inter" "$org/CN=p521" "email:p521@example.com"
cert bp256 bp256 "$inter" "$org/CN=bp256" "email:bp256@example.com"
cert md5cert rsa2048 "$inter" "$org/CN=md5cert" "email:md5cert@example.com" md5
cert sha1cert rsa2048 "$inter" "$org/CN=sha1cert" "email:sha1cert@example.com" sha1
ca weak-ca rsa1024 "$root" "$org/CN=RSA-1024 CA"
cert weakinter rsa2048 weak-ca "$org/CN=weakinter" "email:weakinter@example.com"
ca sha1-ca rsa2048 "$root" "$org/CN=SHA-1 CA" sha1
cert sha1inter rsa2048 sha1-ca "$org/CN=sha1inter" "email:sha1inter@example.com"

rm -f ./*.csr ./*.srl ./*.ext
python3 "$here/build.py" "$pki" "$x" "$out"
echo "adversarial corpus: $(wc -l < "$out/MANIFEST.tsv") messages in $out"
