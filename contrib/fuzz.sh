#!/bin/bash
# Runs every cargo-fuzz target (fuzz/) for SECONDS each (default 600) and
# prints a report: target, executions, corpus size, time, findings.
# Seeds come from the test corpus (tests/corpus/make-corpus.sh), the sample
# messages in tests/data and ../shared/interop when present.
# Usage: contrib/fuzz.sh [SECONDS] [TARGET...]   (FUZZ_JOBS=2: two at a time)
# Needs: a nightly toolchain (rustup) and cargo-fuzz (installed if missing).
# Crashes land in fuzz/artifacts/TARGET/; turn each into a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(message_inbound cms_der signed_data mime auth_results message_outbound config milter_protocol)

command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
work=${FUZZ_WORK:-$root/fuzz/work}
mkdir -p "$work"

# Test PKI and configuration the message targets load (SMIME_FUZZ_CONFIG).
if [ ! -f "$work/pki/root.crt" ]; then
    bash tests/pki/make-pki.sh "$work/pki" >/dev/null
fi
if [ ! -f "$work/signed/MANIFEST.tsv" ]; then
    bash tests/corpus/make-corpus.sh "$work/pki" "$work/signed" >/dev/null 2>&1
fi
# The adversarial corpus: messages crafted to make the inbound verdict lie.
if [ ! -f "$work/adversarial/MANIFEST.tsv" ]; then
    bash tests/adversarial/make-adversarial.sh "$work/pki" "$work/adversarial" >/dev/null 2>&1
fi
mkdir -p "$work/certs"
cp "$work/pki/bob.crt" "$work/certs/bob@example.com.pem"
cp "$work/pki/carol.crt" "$work/certs/carol@example.com.pem"
p=$work/pki
cat > "$work/fuzz.toml" <<TOML
authserv_id = "mx.example.com"
max_message_size = "4M"
[signing]
[[signing.key]]
sender = "alice@example.com"
certificate = "$p/alice.chain.pem"
private_key = "$p/alice.key"
[[signing.key]]
sender = "bob@example.com"
certificate = "$p/bob.chain.pem"
private_key = "$p/bob.enc.key"
passphrase_file = "$p/bob.pass"
[verify]
trust_anchors = "$p/root.crt"
[encrypt]
default_policy = "opportunistic"
certs_dir = "$work/certs"
lookup_order = ["local"]
[decrypt]
enabled = true
[harvest]
enabled = false
TOML
export SMIME_FUZZ_CONFIG=$work/fuzz.toml

seed() { # seed TARGET: fills the target's corpus directory once
    local dir=fuzz/corpus/$1
    mkdir -p "$dir"
    [ -z "$(ls -A "$dir")" ] || return 0
    case $1 in
    cms_der | signed_data)
        # The DER inside the opaque and encrypted test messages.
        for f in "$work"/signed/*.eml; do
            python3 - "$f" "$dir" "$1" <<'PY' || true
import sys, email, hashlib, os
m = email.message_from_binary_file(open(sys.argv[1], 'rb'))
for part in m.walk():
    if part.get_content_type() in ('application/pkcs7-mime', 'application/x-pkcs7-mime',
                                   'application/pkcs7-signature', 'application/x-pkcs7-signature'):
        der = part.get_payload(decode=True) or b''
        kind = b'\x01' if 'enveloped' in (part.get_param('smime-type') or '') else b'\x00'
        data = kind + der if sys.argv[3] == 'cms_der' else der
        open(os.path.join(sys.argv[2], hashlib.sha1(data).hexdigest()), 'wb').write(data)
PY
        done ;;
    config)
        cp contrib/smime-milter.toml "$dir/sample.toml"
        cp "$work/fuzz.toml" "$dir/fuzz.toml" ;;
    milter_protocol)
        # Whole sessions as Postfix sends them, outbound (from 127.0.0.1)
        # and inbound, around the test messages.
        for f in "$work"/signed/*.eml tests/data/plain.eml; do
            for ip in 127.0.0.1 192.0.2.1; do
                python3 - "$f" "$ip" "$dir" <<'PY' || true
import sys, struct, hashlib, os
raw = open(sys.argv[1], 'rb').read().replace(b'\r\n', b'\n').replace(b'\n', b'\r\n')
head, _, body = raw.partition(b'\r\n\r\n')
def pkt(c, d=b''): return struct.pack('>I', len(d) + 1) + c + d
out = pkt(b'O', struct.pack('>III', 6, 0x1ff, 0x1fffff))
out += pkt(b'C', b'client\0' + b'4' + struct.pack('>H', 25) + sys.argv[2].encode() + b'\0')
out += pkt(b'D', b'Mi\0\0{auth_authen}\0\0') + pkt(b'M', b'<alice@example.com>\0')
out += pkt(b'D', b'Ri\0FUZZ1\0') + pkt(b'R', b'<bob@example.com>\0')
for line in head.split(b'\r\n'):
    if line[:1] in (b' ', b'\t') or b':' not in line: continue
    n, _, v = line.partition(b':')
    out += pkt(b'L', n + b'\0' + v.lstrip() + b'\0')
out += pkt(b'N') + pkt(b'B', body) + pkt(b'E') + pkt(b'Q')
open(os.path.join(sys.argv[3], hashlib.sha1(out).hexdigest()), 'wb').write(out)
PY
            done
        done ;;
    auth_results)
        printf 'mx.example.com; smime=pass' > "$dir/a"
        printf '(c) mx.example.com (x) ; smime=fail' > "$dir/b"
        printf '"mx.example.com" 1; none' > "$dir/c"
        printf 'mx.example.com;\r\n\tsmime=pass (x\\) y) body.smime-identifier=a@b' > "$dir/d" ;;
    *)
        cp "$work"/signed/*.eml "$work"/adversarial/*.eml tests/data/*.eml "$dir"/
        if [ -d ../shared/interop ]; then
            find ../shared/interop -name '*.eml' | head -200 | while read -r f; do
                cp "$f" "$dir/$(echo "$f" | md5sum | cut -c1-16).eml"
            done
        fi ;;
    esac
}

report=$work/report.tsv
printf 'target\truns\tcorpus\tseconds\tfindings\n' > "$report"
run_target() {
    local t=$1 log=$work/$1.log start end rc runs found
    start=$(date +%s)
    set +e
    (cd fuzz && cargo +nightly fuzz run --release "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=262144 \
        -print_final_stats=1) > "$log" 2>&1
    rc=$?
    set -e
    end=$(date +%s)
    runs=$(grep -oP 'stat::number_of_executed_units:\s*\K\d+' "$log" | tail -1)
    found=$(ls fuzz/artifacts/"$t" 2>/dev/null | grep -c -E '^(crash|timeout|oom|leak)-' || true)
    printf '%s\t%s\t%s\t%s\t%s\n' "$t" "${runs:-?}" "$(ls "fuzz/corpus/$t" | wc -l)" \
        "$((end - start))" "$found (rc $rc)" >> "$report"
}
for t in "${targets[@]}"; do seed "$t"; done
# FUZZ_JOBS lanes run targets side by side (one core each).
jobs=${FUZZ_JOBS:-1}
(cd fuzz && cargo +nightly fuzz build --release >/dev/null 2>&1) || true
for lane in $(seq 0 $((jobs - 1))); do
    (
        i=0
        for t in "${targets[@]}"; do
            [ $((i % jobs)) -eq "$lane" ] && run_target "$t"
            i=$((i + 1))
        done
    ) &
done
wait
column -t -s $'\t' "$report"
