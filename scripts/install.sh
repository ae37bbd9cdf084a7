#!/usr/bin/env bash
# (Re)install the plugin bundle DIR as NAME on the dockerd that $DOCKER talks to.
#   install.sh [--no-enable] NAME DIR [KEY=VALUE ...]
# An existing plugin of that name is disabled and removed first, so re-running
# replaces it. Its kernel state (namespaces under /run/swarmnet) and store stay;
# the new plugin picks them up at start.
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
enable=1
if [ "${1:-}" = "--no-enable" ]; then enable=0; shift; fi
name=${1:?usage: install.sh [--no-enable] NAME DIR [KEY=VALUE ...]}
dir=${2:?}
shift 2

if "$DOCKER" plugin inspect "$name" >/dev/null 2>&1; then
    echo "install: replacing $name"
    "$DOCKER" plugin disable -f "$name" >/dev/null 2>&1 || true
    "$DOCKER" plugin rm -f "$name" >/dev/null
fi
if ! out=$("$DOCKER" plugin create "$name" "$dir" 2>&1 >/dev/null); then
    echo "$out" >&2
    case $out in
    *"already exists"*)
        echo "install: this dockerd already holds this very build under another name;" \
            "Docker 20.10 stores plugin content once. Remove that plugin first" \
            "(docker plugin ls), or push from another dockerd." >&2
        ;;
    esac
    exit 1
fi
if [ $# -gt 0 ]; then
    "$DOCKER" plugin set "$name" "$@"
fi
if [ $enable = 1 ]; then
    timeout 120 "$DOCKER" plugin enable --timeout 60 "$name" >/dev/null
fi
"$DOCKER" plugin ls --filter "enabled=$([ $enable = 1 ] && echo true || echo false)" \
    --format '{{.ID}} {{.Name}} enabled={{.Enabled}}' | grep -F " $name " || \
    "$DOCKER" plugin ls
