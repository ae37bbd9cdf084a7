#!/usr/bin/env bash
# Turn a built image into a managed-plugin bundle: DIR/config.json + DIR/rootfs/.
#   bundle.sh IMAGE CONFIG_JSON DIR
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
image=${1:?usage: bundle.sh IMAGE CONFIG_JSON DIR}
config=${2:?}
dir=${3:?}

cid=$("$DOCKER" create "$image")
trap '"$DOCKER" rm -f "$cid" >/dev/null 2>&1 || true' EXIT

rm -rf "$dir.tmp"
mkdir -p "$dir.tmp/rootfs"
"$DOCKER" export "$cid" | tar --numeric-owner -C "$dir.tmp/rootfs" -xf -
# docker export leaves the container's own mount points behind; they are empty.
rm -f "$dir.tmp/rootfs/.dockerenv"
python3 -m json.tool "$config" > "$dir.tmp/config.json"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
echo "plugin bundle: $dir ($(du -sh "$dir/rootfs" | cut -f1) rootfs)"
