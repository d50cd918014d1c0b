#!/bin/bash
# Builds a throwaway test PKI with the openssl command line tool:
#   root CA -> intermediate CA -> end-entity S/MIME certificates.
# Usage: make-pki.sh OUTDIR
# Every file is for tests only; the keys are generated fresh each run.
set -euo pipefail
out=${1:?usage: make-pki.sh OUTDIR}
mkdir -p "$out"
cd "$out"
umask 077

days=825
org=${PKI_ORG:-smime-milter tests}
subj() { printf '/O=%s/CN=%s' "$org" "$1"; }

# --- CAs -------------------------------------------------------------------
cat > ca.ext <<'X'
[inter]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
X
openssl req -x509 -new -newkey rsa:2048 -nodes -keyout root.key -out root.crt \
    -subj "$(subj 'Test Root CA')" -days 3650 -sha256 -addext 'basicConstraints=critical,CA:TRUE' \
    -addext 'keyUsage=critical,keyCertSign,cRLSign' -addext 'subjectKeyIdentifier=hash' 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout inter.key -out inter.csr -subj "$(subj 'Test Intermediate CA')" 2>/dev/null
openssl x509 -req -in inter.csr -CA root.crt -CAkey root.key -CAcreateserial -out inter.crt \
    -days 3000 -sha256 -extfile ca.ext -extensions inter 2>/dev/null

# --- end entities ------------------------------------------------------------
# ee NAME ADDRESS KEYSPEC [KU] [EKU] [CA]
ee() {
    local name=$1 addr=$2 keyspec=$3 ku=${4:-} eku=${5:-emailProtection} ca=${6:-inter}
    case $keyspec in
        rsa-pss:*) openssl genpkey -algorithm RSA-PSS -pkeyopt "rsa_keygen_bits:${keyspec#rsa-pss:}" -out "$name.key" 2>/dev/null
               [ -n "$ku" ] || ku='digitalSignature, nonRepudiation' ;;
        rsa:*) openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:${keyspec#rsa:}" -out "$name.key" 2>/dev/null
               [ -n "$ku" ] || ku='digitalSignature, nonRepudiation, keyEncipherment' ;;
        ec:*)  openssl genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:${keyspec#ec:}" -out "$name.key" 2>/dev/null
               [ -n "$ku" ] || ku='digitalSignature, nonRepudiation, keyAgreement' ;;
    esac
    cat > "$name.ext" <<X
basicConstraints = critical, CA:FALSE
keyUsage = critical, $ku
extendedKeyUsage = $eku
subjectAltName = email:$addr
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
X
    openssl req -new -key "$name.key" -out "$name.csr" -subj "$(subj "$name")/emailAddress=$addr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -out "$name.crt" \
        -days $days -sha256 -extfile "$name.ext" 2>/dev/null
    # The chain file the milter is given: signer, then intermediate.
    cat "$name.crt" "$ca.crt" > "$name.chain.pem"
}

ee alice alice@example.com rsa:2048
ee bob bob@example.com ec:P-256
ee carol carol@example.com rsa:3072
ee dave dave@example.net ec:P-384
ee org info@example.org rsa:2048

# bob's key encrypted with a passphrase file.
printf 'bob secret passphrase\n' > bob.pass
openssl pkey -in bob.key -out bob.enc.key -aes256 -passout file:bob.pass 2>/dev/null
# carol as PKCS#12 (key, certificate, intermediate and root).
printf 'carol-p12-pass\n' > carol.pass
openssl pkcs12 -export -inkey carol.key -in carol.crt -certfile <(cat inter.crt root.crt) \
    -out carol.p12 -passout file:carol.pass -name carol 2>/dev/null

# A weak key the milter must refuse to load.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out weak.key 2>/dev/null
openssl req -x509 -new -key weak.key -out weak.crt -subj "$(subj weak)" -days 30 2>/dev/null

# A CA nobody trusts, and a certificate from it.
openssl req -x509 -new -newkey rsa:2048 -nodes -keyout rogue-root.key -out rogue-root.crt \
    -subj "$(subj 'Rogue Root CA')" -days 3650 -addext 'basicConstraints=critical,CA:TRUE' \
    -addext 'keyUsage=critical,keyCertSign,cRLSign' -addext 'subjectKeyIdentifier=hash' 2>/dev/null

# Signers for the verification corpus: each one wrong in one way.
ee pss pss@example.com rsa-pss:2048
ee eve eve@example.com rsa:2048 '' emailProtection rogue-root
ee web web@example.com rsa:2048 '' serverAuth
ee nosig nosig@example.com rsa:2048 'keyEncipherment'
ee weaksig weaksig@example.com rsa:1024

# expired@example.com: a certificate whose validity ended in 2021.
ee expired expired@example.com rsa:2048
# ca_db DIR SERIAL: an `openssl ca` database in DIR, for certificates
# whose validity dates are chosen (x509 -req cannot backdate).
ca_db() {
    mkdir -p "$1" && : > "$1/index.txt" && echo "$2" > "$1/serial"
    cat > "$1/ca.cnf" <<X
[ca]
default_ca = this
[this]
database = $out/$1/index.txt
serial = $out/$1/serial
new_certs_dir = $out/$1
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
organizationName = optional
emailAddress = optional
[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
X
}
ca_db ca-db 1000
openssl req -new -key expired.key -out expired.csr -subj "$(subj expired)/emailAddress=expired@example.com" 2>/dev/null
openssl ca -batch -config ca-db/ca.cnf -cert inter.crt -keyfile inter.key -in expired.csr -out expired.crt \
    -startdate 200101000000Z -enddate 210101000000Z -extfile expired.ext -notext 2>/dev/null
cat expired.crt inter.crt > expired.chain.pem
rm -rf ca-db

# CRLs: the intermediate revokes revoked@example.com; the root revokes nothing.
ee revoked revoked@example.com rsa:2048
mkdir -p crl
for ca in inter root; do
    mkdir -p "ca-$ca" && : > "ca-$ca/index.txt" && echo 01 > "ca-$ca/crlnumber"
    cat > "ca-$ca/ca.cnf" <<X
[ca]
default_ca = c
[c]
database = $out/ca-$ca/index.txt
crlnumber = $out/ca-$ca/crlnumber
default_md = sha256
default_crl_days = 30
X
done
openssl ca -config ca-inter/ca.cnf -cert inter.crt -keyfile inter.key -revoke revoked.crt 2>/dev/null
openssl ca -config ca-inter/ca.cnf -cert inter.crt -keyfile inter.key -gencrl -out crl/inter.crl.pem 2>/dev/null
openssl ca -config ca-root/ca.cnf -cert root.crt -keyfile root.key -gencrl -out crl/root.crl.pem 2>/dev/null
rm -rf ca-inter ca-root

# held@example.com: a signer whose whole chain began three days ago, under a
# root of its own, for messages whose Date lies hours before they reach us.
ago=$(date -u -d '-3 days' +%Y%m%d%H%M%SZ)
until=$(date -u -d '+1 year' +%Y%m%d%H%M%SZ)
ca_db ca-held 2000
openssl req -new -newkey rsa:2048 -nodes -keyout held-root.key -out held-root.csr -subj "$(subj 'Held Root CA')" 2>/dev/null
openssl ca -batch -selfsign -config ca-held/ca.cnf -keyfile held-root.key -in held-root.csr -out held-root.crt \
    -startdate "$ago" -enddate "$until" -extfile ca-held/ca.cnf -extensions root -notext 2>/dev/null
ee held held@example.com rsa:2048 '' emailProtection held-root
openssl ca -batch -config ca-held/ca.cnf -cert held-root.crt -keyfile held-root.key -in held.csr -out held.crt \
    -startdate "$ago" -enddate "$until" -extfile held.ext -notext 2>/dev/null
cat held.crt > held.chain.pem
rm -rf ca-held

# A TLS server certificate for the test LDAP server on 127.0.0.1.
openssl req -new -newkey rsa:2048 -nodes -keyout ldap-server.key -out ldap-server.csr -subj "$(subj localhost)" 2>/dev/null
printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n' > ldap-server.ext
openssl x509 -req -in ldap-server.csr -CA inter.crt -CAkey inter.key -CAcreateserial -out ldap-server.crt \
    -days $days -sha256 -extfile ldap-server.ext 2>/dev/null
cat ldap-server.crt inter.crt > ldap-server.chain.pem

# Extra recipients for benchmarks: RECIPIENTS=N makes rcpt1..rcptN@example.net.
for i in $(seq 1 "${RECIPIENTS:-0}"); do
    ee "rcpt$i" "rcpt$i@example.net" rsa:2048
done

rm -f ./*.csr ./*.srl
chmod 600 ./*.key ./*.pass ./*.p12
chmod 644 ./*.crt ./*.pem crl/*
echo "test PKI written to $(pwd)"
