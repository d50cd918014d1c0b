#!/bin/bash
# smime-milter demo: builds the milter, creates a DEMO certificate authority
# and keys on first run (in ./demo, never to be used for real mail), signs a
# sample message with the very code path the milter runs, verifies it with
# OpenSSL, then runs the milter in the foreground on a unix socket.
#
#   contrib/demo.sh     # as root, or as a user with sudo (for the Debian packages)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

echo "== checking the Debian packages it needs (contrib/dev-setup.sh)"
contrib/dev-setup.sh
echo "== building smime-milter (release; the first build takes a few minutes)"
cargo build --release --locked
bin=$top/target/release/smime-milter

demo=$top/demo
if [ ! -f "$demo/pki/root.crt" ]; then
    echo "== creating the DEMO PKI in $demo/pki (throwaway keys, never use them for real mail)"
    PKI_ORG="smime-milter DEMO - not for real use" tests/pki/make-pki.sh "$demo/pki" >/dev/null
fi
mkdir -p "$demo/run"
chmod 755 "$demo" "$demo/run"

user_line=""
[ "$(id -u)" -eq 0 ] && user_line='user = "nobody"'
cat > "$demo/smime-milter.toml" <<TOML
# DEMO configuration written by contrib/demo.sh; see contrib/smime-milter.toml
# for every key with its documentation.
socket = "unix:$demo/run/smime-milter.sock"
socket_mode = "0666"
$user_line
log_level = "info"

[[signing.key]]
sender = "alice@example.com"
certificate = "$demo/pki/alice.chain.pem"
private_key = "$demo/pki/alice.key"

[[signing.key]]
sender = "@example.org"
certificate = "$demo/pki/org.chain.pem"
private_key = "$demo/pki/org.key"
TOML

"$bin" --check-config -c "$demo/smime-milter.toml"

cat > "$demo/sample.eml" <<'MAIL'
From: Alice <alice@example.com>
To: Bob <bob@example.net>
Subject: Hello from the smime-milter demo
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Hello Bob,

this message was signed by smime-milter. Grüße!
MAIL

echo
echo "== signing demo/sample.eml as an outbound message (smime-milter test --outbound)"
"$bin" test -c "$demo/smime-milter.toml" --outbound "$demo/sample.eml" > "$demo/sample.signed.eml"
sed -n '1,/^$/p' "$demo/sample.signed.eml"
echo "   (whole message in demo/sample.signed.eml)"
echo
echo "== verifying the signature with OpenSSL against the demo root CA"
openssl cms -verify -inform SMIME -in "$demo/sample.signed.eml" -CAfile "$demo/pki/root.crt" \
    -purpose smimesign -out /dev/null
echo
echo "== verifying it as inbound mail, as the milter would (smime-milter test --inbound)"
cat > "$demo/verify.toml" <<TOML
# DEMO: verification against the demo root CA.
authserv_id = "mx.demo.example"
[verify]
trust_anchors = "$demo/pki/root.crt"
TOML
"$bin" test -c "$demo/verify.toml" --inbound "$demo/sample.signed.eml" > "$demo/sample.verified.eml"
sed -n '/^Authentication-Results:/,/^[^ \t]/p' "$demo/sample.verified.eml" | sed '$d'
grep -q 'smime=pass' "$demo/sample.verified.eml"
echo
echo "== running the milter on unix:$demo/run/smime-milter.sock (Ctrl-C to stop)"
echo "   Point Postfix at it with: smtpd_milters = unix:$demo/run/smime-milter.sock"
echo "   (see postfix-sample/ for the complete settings)"
exec "$bin" -f -c "$demo/smime-milter.toml"
