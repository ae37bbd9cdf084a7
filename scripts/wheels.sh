#!/usr/bin/env bash
# Build the wheels the plugin image installs from (no index is reachable in `docker build`).
#   wheels.sh deps DIR      wheels of every runtime dependency, extras included
#   wheels.sh project DIR   the swarmnet-overlay wheel itself, rebuilt from the tree
# The image's Python is 3.11 (Debian bookworm); the host's must match so that
# binary wheels (e.g. MarkupSafe) fit.
set -euo pipefail

PYTHON=${PYTHON:-python3}
what=${1:?usage: wheels.sh deps|project DIR}
dir=${2:?usage: wheels.sh deps|project DIR}
here=$(cd "$(dirname "$0")/.." && pwd)

ver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$ver" != "3.11" ]; then
    echo "wheels.sh: $PYTHON is Python $ver; the plugin image runs 3.11. Set PYTHON=python3.11." >&2
    exit 1
fi

mkdir -p "$dir"
cd "$here"
# setuptools builds in ./build/{lib,bdist.*}; stale files there would end up in the wheel.
rm -rf build/lib build/bdist.* ./*.egg-info
case $what in
deps)
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check -w "$dir" '.[etcd]'
    ;;
project)
    rm -f "$dir"/swarmnet_overlay-*.whl
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$dir" .
    ;;
*)
    echo "wheels.sh: unknown step $what" >&2
    exit 2
    ;;
esac
rm -rf build/lib build/bdist.* ./*.egg-info
ls "$dir"
