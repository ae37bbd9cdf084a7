#!/usr/bin/env bash
# Make sure the base image named by $1 exists in the local dockerd.
#
# No image registry is reachable here, so when the image is missing we build an
# equivalent one: a minimal Debian bookworm with python3 and python3-venv made by
# debootstrap from the apt mirror configured on this host, then `docker import`.
# The rootfs tarball is cached under build/ so debootstrap runs once per machine.
set -euo pipefail

IMAGE=${1:?usage: base-image.sh IMAGE [CACHE_DIR]}
CACHE=${2:-build/base}
DOCKER=${DOCKER:-/usr/bin/docker}
SUITE=${SUITE:-bookworm}

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE: present"
    exit 0
fi

mirror() {
    # First "URIs:" of a deb822 source that carries the suite, else a one-line source.
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        uri=$(awk -v suite="$SUITE" '
            /^[[:space:]]*$/ { if (u != "" && s) { print u; exit } u = ""; s = 0; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) s = 1 }
            END { if (u != "" && s) print u }' "$f" | head -n1)
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        uri=$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' "$f")
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    echo "http://deb.debian.org/debian"
}

mkdir -p "$CACHE"
TARBALL="$CACHE/$SUITE-python3.tar"
if [ ! -s "$TARBALL" ]; then
    MIRROR=$(mirror)
    echo "base image $IMAGE: missing; debootstrap $SUITE from $MIRROR (once, cached in $TARBALL)"
    ROOT=$(mktemp -d "${TMPDIR:-/tmp}/swarmnet-base.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    timeout 1200 debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOT" "$MIRROR"
    # Slim it: package caches, docs and locales are not needed in a plugin rootfs.
    chroot "$ROOT" apt-get clean
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* \
        "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
        "$ROOT"/usr/share/locale/* "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* \
        "$ROOT"/tmp/* "$ROOT"/root/.cache
    find "$ROOT"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    tar --numeric-owner -C "$ROOT" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi

echo "base image $IMAGE: importing $TARBALL"
"$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$IMAGE" >/dev/null
"$DOCKER" image inspect -f '{{.Id}} {{.Size}}' "$IMAGE"
