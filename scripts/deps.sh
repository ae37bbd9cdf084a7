#!/usr/bin/env bash
# Install what building and testing swarmnet-overlay needs. Idempotent.
#   scripts/deps.sh            every system package the tests, the lab and the bench use,
#                              + the Python venv .venv with the project
#   scripts/deps.sh --venv     only what `make plugin` / `make install` need on a node
#                              (python3-venv, debootstrap) + .venv; never touches docker
# Debian/Ubuntu; needs root for apt. tests/unit/test_deps.py checks that every tool the
# suites call comes from a package listed here (or from Debian's required base).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker.io debootstrap busybox-static etcd-server docker-registry iperf3 tcpdump
          iproute2 iptables util-linux curl make python3-venv kmod etcd-client
          nftables ipvsadm iputils-ping procps prometheus linux-perf openssl)
mode=${1:-all}
case $mode in
all) ;;
--venv) packages=(python3-venv debootstrap) ;;
*) echo "usage: $0 [--venv]" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "deps: missing packages ${missing[*]}; run this as root (sudo make ...)" >&2
        exit 1
    fi
    echo "deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The distro enables these services on install on some systems; the tests start their own
# daemons (prometheus: on loopback in a test dockerd's namespace, with a temporary store).
# Only in the full mode: on a node, an etcd the user runs is none of our business.
services=()
[ "$mode" = all ] && services=(etcd docker-registry prometheus)
for svc in "${services[@]}"; do
    if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
    # prometheus would come back at the next boot, listening on every address (:9090).
    if [ "$svc" = prometheus ] && command -v systemctl >/dev/null \
            && systemctl is-enabled -q "$svc" 2>/dev/null; then
        systemctl disable -q "$svc" || true
    fi
done

PY=${PYTHON_FOR_VENV:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,etcd]'
touch .venv/.deps-ok  # the Makefile's `venv` step: this venv is complete
echo "deps: ready ($(.venv/bin/python --version), $(/usr/bin/docker --version 2>/dev/null || echo 'no docker'))"
