#!/usr/bin/env bash
# Installs the Debian packages the test suite needs beyond the Rust toolchain:
#   chromium     headless browser for the dashboard test (crates/noodle/tests/it/dashboard.rs)
#   fonts-dejavu-core  a font, so that the browser renders text on a bare machine
#   iproute2     `ip netns` for the network-namespace tests
#   python3, python3-yaml  a system interpreter and package that sandboxed jobs must still use
#   fuse3        fusermount3, for `noodle mount` and its tests (crates/noodle/tests/it/mount.rs)
# Idempotent: when everything is already installed it does nothing (no apt-get at all).
# Run as root, or as a user with sudo. CI runs it before `cargo test`.
set -euo pipefail

packages=(chromium fonts-dejavu-core iproute2 python3 python3-yaml fuse3)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
# The package can be present while its command is not (a broken install): check those too.
command -v chromium >/dev/null 2>&1 || [[ " ${missing[*]} " == *" chromium "* ]] || missing+=(chromium)
command -v ip >/dev/null 2>&1 || [[ " ${missing[*]} " == *" iproute2 "* ]] || missing+=(iproute2)
command -v fusermount3 >/dev/null 2>&1 || [[ " ${missing[*]} " == *" fuse3 "* ]] || missing+=(fuse3)

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "install-test-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
fi

echo "install-test-deps: installing ${missing[*]}" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

for p in "${missing[@]}"; do
    installed "$p" || { echo "install-test-deps: $p did not install" >&2; exit 1; }
done
command -v chromium >/dev/null 2>&1 || { echo "install-test-deps: no chromium command after install" >&2; exit 1; }
command -v fusermount3 >/dev/null 2>&1 || { echo "install-test-deps: no fusermount3 command after install" >&2; exit 1; }
