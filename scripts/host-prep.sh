#!/usr/bin/env bash
# Prepare the host for the swarmnet-overlay plugin. Idempotent; run it after each boot.
#   host-prep.sh [STATE_DIR] [RUN_DIR] [DOCKER_EXEC_ROOT]
#
# The plugin bind-mounts one network namespace per network under RUN_DIR/netns.
# Those mounts must appear in the host's mount namespace and outlive the plugin
# process (plugin disable/enable, upgrade, dockerd restart), because containers'
# interfaces hang off them. That works only when RUN_DIR sits in a *shared* mount
# on the host (see docs/packaging.md). systemd hosts have / shared already; hosts
# where / is private (containers, minimal inits) need RUN_DIR made a shared mount
# of its own, as `ip netns` does for /run/netns.
#
# Load balancing reads the containers' namespaces from dockerd's exec root
# (DOCKER_EXEC_ROOT, the plugin's docker-run mount, rslave). Namespaces dockerd binds
# there after the plugin started reach the plugin only when the exec root, too, is
# in a shared mount on the host: the same treatment, recursive so that the
# namespaces already bound under it stay visible.
set -euo pipefail

state=${1:-/var/lib/swarmnet}
run=${2:-/run/swarmnet}
exec_root=${3:-/var/run/docker}

mkdir -p "$state" "$run/netns"
chmod 0700 "$state"

propagation() { findmnt -n -o PROPAGATION --target "$1" | head -n1; }

case "$(propagation "$run")" in
shared*)
    echo "host-prep: $run is in a shared mount"
    ;;
*)
    if ! mountpoint -q "$run"; then
        mount --bind "$run" "$run"
    fi
    mount --make-shared "$run"
    echo "host-prep: made $run a shared mount"
    ;;
esac

mkdir -p "$exec_root"
exec_root=$(realpath "$exec_root")
case "$(propagation "$exec_root")" in
shared*)
    echo "host-prep: $exec_root is in a shared mount"
    ;;
*)
    if ! mountpoint -q "$exec_root"; then
        mount --rbind "$exec_root" "$exec_root"
    fi
    mount --make-rshared "$exec_root"
    echo "host-prep: made $exec_root a shared mount (restart the plugin if it was running)"
    ;;
esac
