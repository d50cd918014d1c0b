#!/bin/sh
# make-online-pki.sh DIR PORT DOWN_PORT SILENT_PORT: a PKI whose certificates
# point at http://127.0.0.1:PORT (tests/pki/online-server.py) for OCSP, CRLs
# and caIssuers; at DOWN_PORT, where nothing listens; and at SILENT_PORT,
# where connections are taken and never answered. EC P-256 keys (fast).
#   root          Online Root (trust anchor; also root.p7b, a PKCS#7 bundle)
#   inter         issued by root; CRL DP root.crl; caIssuers www/inter.der,
#                 www/inter.p7c (PKCS#7 certs-only), CRL www/inter.crl
#   <leaf>.crt    issued by inter, <leaf>@example.org, with their URLs:
#     good, revoked     OCSP /ocsp/<leaf>/, caIssuers inter.der
#     crlgood, crlrevoked   CRL DP inter.crl only
#     slowcrl           CRL DP slow/inter.crl (served after 1 s)
#     down              OCSP at DOWN_PORT only
#     silent            OCSP and CRL at SILENT_PORT only
#     p7                OCSP, caIssuers inter.p7c
#     rcpt-old, rcpt-new  both rcpt@example.org; rcpt-new expires later and is revoked
#     lone              lone@example.org, revoked
#     flaky             OCSP at /broken/ (HTTP 503), caIssuers inter.der
#     forged            OCSP answered signed by good's key (not authorized)
#     delegated         OCSP answered by responder (EKU OCSPSigning, issued by inter)
#     replay            OCSP whose server answers every request with its first answer
#     private           caIssuers http://10.255.255.1/inter.der
# Revoked ones are in inter/index.txt, which the OCSP responder reads.
set -eu
out=$1
base=http://127.0.0.1:$2
down=http://127.0.0.1:$3
silent=http://127.0.0.1:$4
mkdir -p "$out/www" && cd "$out"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }

ca_db() {
    mkdir -p "$1" && : > "$1/index.txt" && echo 1000 > "$1/serial" && echo 01 > "$1/crlnumber"
    cat > "$1/ca.cnf" <<X
[ca]
default_ca = this
[this]
database = $out/$1/index.txt
serial = $out/$1/serial
crlnumber = $out/$1/crlnumber
new_certs_dir = $out/$1
default_md = sha256
default_days = 365
default_crl_days = 1
policy = any
copy_extensions = none
unique_subject = no
[any]
commonName = supplied
X
}

key root
openssl req -new -x509 -key root.key -subj "/CN=Online Root" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out root.crt 2>/dev/null
openssl crl2pkcs7 -nocrl -certfile root.crt -out root.p7b
ca_db rootdb
ca_db inter
# The intermediate's CRLs carry a critical issuing distribution point (as
# many CAs' do): it must match the certificates' distribution point.
cat >> inter/ca.cnf <<X
[crl_ext]
issuingDistributionPoint = critical, @idp
[idp]
fullname = URI:$base/inter.crl
X

key inter
cat > inter.ext <<X
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:$base/root.crl
X
openssl req -new -key inter.key -subj "/CN=Online Intermediate" -out inter.csr 2>/dev/null
openssl ca -batch -config rootdb/ca.cnf -cert root.crt -keyfile root.key -in inter.csr \
    -out inter.crt -extfile inter.ext -notext -days 1800 2>/dev/null
openssl x509 -in inter.crt -outform DER -out www/inter.der
openssl crl2pkcs7 -nocrl -certfile inter.crt -outform DER -out www/inter.p7c

# leaf NAME ADDRESS DAYS "EXTENSION LINES"
leaf() {
    key "$1"
    cat > "$1.ext" <<X
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = emailProtection
subjectAltName = email:$2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
$4
X
    openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr" 2>/dev/null
    openssl ca -batch -config inter/ca.cnf -cert inter.crt -keyfile inter.key -in "$1.csr" \
        -out "$1.crt" -extfile "$1.ext" -notext -days "$3" 2>/dev/null
    cat "$1.crt" inter.crt > "$1.chain.pem"
}
aia() { echo "authorityInfoAccess = OCSP;URI:$base/ocsp/$1/,caIssuers;URI:$base/$2"; }

leaf good good@example.org 365 "$(aia good inter.der)"
leaf revoked revoked@example.org 365 "$(aia revoked inter.der)"
leaf crlgood crlgood@example.org 365 "crlDistributionPoints = URI:$base/inter.crl"
leaf crlrevoked crlrevoked@example.org 365 "crlDistributionPoints = URI:$base/inter.crl"
leaf slowcrl slowcrl@example.org 365 "crlDistributionPoints = URI:$base/slow/inter.crl"
leaf down down@example.org 365 "authorityInfoAccess = OCSP;URI:$down/"
leaf silent silent@example.org 365 "authorityInfoAccess = OCSP;URI:$silent/
crlDistributionPoints = URI:$silent/x.crl"
leaf p7 p7@example.org 365 "$(aia p7 inter.p7c)"
leaf rcpt-old rcpt@example.org 100 "$(aia rcpt inter.der)"
leaf rcpt-new rcpt@example.org 300 "$(aia rcpt inter.der)"
leaf lone lone@example.org 365 "$(aia lone inter.der)"
leaf forged forged@example.org 365 "$(aia forged inter.der)"
leaf delegated delegated@example.org 365 "$(aia delegated inter.der)"
leaf replay replay@example.org 365 "$(aia replay inter.der)"
key responder
printf 'basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = OCSPSigning\nnoCheck = ignored\n' > responder.ext
openssl req -new -key responder.key -subj "/CN=Online OCSP Responder" -out responder.csr 2>/dev/null
openssl ca -batch -config inter/ca.cnf -cert inter.crt -keyfile inter.key -in responder.csr \
    -out responder.crt -extfile responder.ext -notext -days 365 2>/dev/null
leaf flaky flaky@example.org 365 "authorityInfoAccess = OCSP;URI:$base/broken/,caIssuers;URI:$base/inter.der"
leaf private private@example.org 365 "authorityInfoAccess = caIssuers;URI:http://10.255.255.1/inter.der"

for r in revoked crlrevoked rcpt-new lone; do
    openssl ca -config inter/ca.cnf -cert inter.crt -keyfile inter.key -revoke "$r.crt" \
        -crl_reason keyCompromise 2>/dev/null
done
openssl ca -gencrl -config rootdb/ca.cnf -cert root.crt -keyfile root.key -out root.crl.pem 2>/dev/null
openssl crl -in root.crl.pem -outform DER -out www/root.crl
cat > gencrl <<X
#!/bin/sh
# gencrl [SECONDS]: www/inter.crl anew, due in SECONDS (default a day).
set -e
cd "$out"
if [ -n "\${1:-}" ]; then due="-crlsec \$1"; else due="-crldays 1"; fi
openssl ca -gencrl -config inter/ca.cnf -cert inter.crt -keyfile inter.key -crlexts crl_ext \$due -out inter.crl.pem 2>/dev/null
openssl crl -in inter.crl.pem -outform DER -out www/inter.crl.new
mv www/inter.crl.new www/inter.crl
X
chmod +x gencrl
./gencrl
