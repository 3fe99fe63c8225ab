#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine, then the project itself.
#
# Why a script and not a README paragraph: CI machines start empty, and the integration tests
# need a real dockerd, both iptables backends, busybox-static (the only image source without a
# registry) and Prometheus. Running it twice is harmless: apt-get and pip skip what is there.
# Runs as root without sudo; uses sudo only when it is not root and sudo exists.
set -euo pipefail

cd "$(dirname "$0")/.."

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: not root and no sudo: cannot install system packages" >&2
        exit 1
    fi
fi

PACKAGES=(
    docker.io iptables ipset ebtables nftables busybox-static iproute2 procps kmod debootstrap
    ca-certificates make prometheus prometheus-alertmanager docker-compose openssl systemd strace util-linux
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

# Quiet-ish: apt's progress goes to a log, which is printed only when apt fails.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
run_quiet() {
    if ! "$@" >"$log" 2>&1; then
        echo "install-deps: failed: $*" >&2
        cat "$log" >&2
        exit 1
    fi
}

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    run_quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    run_quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${PACKAGES[@]}"
else
    echo "install-deps: system packages already installed"
fi

# Debian's own python3 ships without pip, and marks itself externally managed (PEP 668). The
# suite runs with whatever python3 is first on PATH, so the project goes into that one.
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "install-deps: apt-get install python3-pip (python3 has no pip)"
    run_quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    run_quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends python3-pip
fi
pip_flags=(--disable-pip-version-check)
if python3 -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
fi

echo "install-deps: pip install -e .[test] ($(command -v python3))"
run_quiet python3 -m pip install "${pip_flags[@]}" -e '.[test]'
echo "install-deps: done"
