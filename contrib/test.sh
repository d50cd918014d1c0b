#!/bin/bash
# Runs the whole test suite: installs the Debian packages it needs
# (contrib/dev-setup.sh), then `cargo test`. The tests start throwaway Postfix,
# Sendmail, slapd and SoftHSM2 instances and install the .deb, so they run as
# root: run this as root, or as a user with sudo (the crates are fetched as
# you, the tests run as root with their own target directory).
#   contrib/test.sh [cargo test arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "test.sh: run as root, or install sudo" >&2; exit 1; }
    command -v cargo >/dev/null || { echo "test.sh: cargo not found: install Rust 1.88 or newer (https://rustup.rs)" >&2; exit 1; }
    echo "test.sh: fetching crates as $(id -un)" >&2
    cargo fetch --locked
    echo "test.sh: running the tests as root (sudo)" >&2
    exec sudo env "PATH=$PATH" "HOME=$HOME" "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" \
        "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" "CARGO_TARGET_DIR=$PWD/target/root" \
        ${CI:+CI=$CI} ${SMIME_SOAK_SECS:+SMIME_SOAK_SECS=$SMIME_SOAK_SECS} "$0" "$@"
fi

contrib/dev-setup.sh
echo "test.sh: building and running the tests (the first build takes a few minutes; the whole run about 10)" >&2
exec cargo test --locked "$@"
