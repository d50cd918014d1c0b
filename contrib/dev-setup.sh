#!/bin/bash
# Installs the Debian 12 packages smime-milter needs to build and to run its
# test suite (Postfix, miltertest, gpgsm, ...). Idempotent and quiet; run as
# root. Debian's Postfix and slapd are installed unconfigured and are not
# started: the tests run throwaway instances of their own.
set -euo pipefail

packages=(
    pkg-config libssl-dev                 # build
    openssl postfix miltertest            # tests: MTA, milter client
    gpgsm gpg-agent libnss3-tools         # independent S/MIME verifiers
    slapd ldap-utils                      # tests: a real directory
    softhsm2 libengine-pkcs11-openssl opensc   # PKCS#11 keys: token, engine, pkcs11-tool
    debhelper dpkg-dev build-essential rpm      # packages: build the .deb, parse the spec
    m4                                          # Sendmail configuration for its test
    man-db                                      # man -l: the manual pages as rendered (tests/docs.rs)
    python3 ca-certificates iproute2
    python3-prometheus-client                   # tests: the metrics parsed by Prometheus's own parser
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            echo "dev-setup: installing Debian packages with sudo: ${missing[*]}" >&2
            exec sudo env "PATH=$PATH" "$0" "$@"
        fi
        echo "dev-setup: missing packages: ${missing[*]} (run as root, or install sudo)" >&2
        exit 1
    fi
    echo "dev-setup: installing ${missing[*]} (a minute or two)" >&2
    # Keep the system Postfix unconfigured and stopped.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    rc=0
    {
        apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    } > /tmp/smime-milter-apt.log 2>&1 || rc=$?
    [ $made_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ $rc -ne 0 ]; then
        tail -20 /tmp/smime-milter-apt.log >&2
        echo "dev-setup: apt-get failed (rc=$rc)" >&2
        exit 1
    fi
fi

# Sendmail for its end-to-end test: it cannot be installed beside Postfix
# (both are the MTA), so its Debian packages are unpacked into a cache
# directory and run from there.
sendmail_root=/var/cache/smime-milter-tests/sendmail
if [ ! -x "$sendmail_root/root/usr/libexec/sendmail/sendmail" ] && [ "$(id -u)" -eq 0 ]; then
    mkdir -p "$sendmail_root"
    (
        cd "$sendmail_root"
        apt-get download -qq sendmail-bin sendmail-cf >/tmp/smime-milter-apt.log 2>&1 ||
            { apt-get update -qq && apt-get download -qq sendmail-bin sendmail-cf; } >>/tmp/smime-milter-apt.log 2>&1
        for deb in sendmail-bin_*.deb sendmail-cf_*.deb; do dpkg-deb -x "$deb" root; done
        rm -f ./*.deb
    ) || { tail -5 /tmp/smime-milter-apt.log >&2; echo "dev-setup: cannot fetch Sendmail" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null; then
    echo "dev-setup: cargo not found: install Rust 1.88 or newer (https://rustup.rs)" >&2
    exit 1
fi
