#!/bin/bash
# Builds the Debian package from this checkout: a clean copy of the tracked
# files with packaging/debian as debian/, then dpkg-buildpackage -b.
# Usage: packaging/build-deb.sh OUTDIR    (needs debhelper, dpkg-dev, cargo)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:?usage: build-deb.sh OUTDIR}" && cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/smime-milter-0.1.0"
src=$work/smime-milter-0.1.0
(cd "$top" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$src"
cp -r "$src/packaging/debian" "$src/debian"
cp "$src/contrib/systemd/smime-milter.service" "$src/debian/smime-milter.service"
# Reuse one cargo target directory across builds of this checkout.
export CARGO_TARGET_DIR=$top/target/deb
(cd "$src" && dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) || { tail -40 "$work/build.log" >&2; exit 1; }
mv "$work"/*.deb "$out"/
ls "$out"/*.deb
