#!/usr/bin/env bash
# Install what building and testing swarmnet-overlay needs. Idempotent.
#   scripts/deps.sh            system packages + the Python venv .venv with the project
# Debian/Ubuntu; needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker.io debootstrap busybox-static etcd-server docker-registry iperf3 tcpdump
          iproute2 iptables util-linux curl make python3-venv kmod)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The distro enables these services on install on some systems; we start our own daemons.
for svc in etcd docker-registry; do
    if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
done

PY=${PYTHON_FOR_VENV:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,etcd]'
echo "deps: ready ($(.venv/bin/python --version), $(/usr/bin/docker --version 2>/dev/null || echo 'no docker'))"
