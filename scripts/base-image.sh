#!/usr/bin/env bash
# Make sure the base image named by $1 exists in the local dockerd.
#
# No image registry is reachable here, so when the image is missing we build an
# equivalent one: a minimal Debian bookworm with python3, python3-venv and nftables
# (the plugin marks service VIP traffic with `nft`) made by debootstrap from the apt
# mirror configured on this host, then `docker import`.
# The rootfs tarball is cached so debootstrap runs once per machine; its file name
# carries a digest of the package list and of the trimming below, so changing either
# makes a new tarball instead of silently reusing an old one.
set -euo pipefail

IMAGE=${1:?usage: base-image.sh IMAGE [CACHE_DIR]}
CACHE=${2:-build/base}
DOCKER=${DOCKER:-/usr/bin/docker}
SUITE=${SUITE:-bookworm}
INCLUDE=python3,python3-venv,ca-certificates,nftables
# Bump when the trimming below changes (it is part of the cache key).
RECIPE=2
KEY=$(printf '%s %s %s' "$SUITE" "$INCLUDE" "$RECIPE" | sha256sum | cut -c1-12)

# An image we imported carries its key as a label, and one made from an older package
# list (or before labels) is imported again. The official image (it sets PYTHON_VERSION)
# is used as it is; the Dockerfile adds nftables to it.
if meta=$("$DOCKER" image inspect \
        -f '{{index .Config.Labels "swarmnet.base"}} {{range .Config.Env}}{{.}} {{end}}' \
        "$IMAGE" 2>/dev/null); then
    case " $meta " in
    " $KEY "* | *" PYTHON_VERSION="*)
        echo "base image $IMAGE: present"
        exit 0
        ;;
    esac
    echo "base image $IMAGE: present but not made from this package list; replacing it"
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
TARBALL="$CACHE/$SUITE-python3-$KEY.tar"
if [ ! -s "$TARBALL" ]; then
    MIRROR=$(mirror)
    echo "base image $IMAGE: missing; debootstrap $SUITE from $MIRROR (once, cached in $TARBALL)"
    ROOT=$(mktemp -d "${TMPDIR:-/tmp}/swarmnet-base.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    timeout 1200 debootstrap --variant=minbase \
        --include="$INCLUDE" \
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
    --change "LABEL swarmnet.base=$KEY" \
    "$TARBALL" "$IMAGE" >/dev/null
"$DOCKER" image inspect -f '{{.Id}} {{.Size}}' "$IMAGE"
