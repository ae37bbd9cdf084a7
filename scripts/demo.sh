#!/usr/bin/env bash
# Build, install and show swarmnet-overlay on this machine's dockerd, with the embedded store.
#   scripts/demo.sh      (make demo)
# Starts dockerd if none answers. Uses swarm scope if this dockerd is a swarm
# manager, local scope otherwise. Leaves the plugin installed and enabled.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-/usr/bin/docker}
export DOCKER

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ! timeout 5 "$DOCKER" info >/dev/null 2>&1; then
    say "starting dockerd (log: /var/log/swarmnet-demo-dockerd.log)"
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nohup dockerd >/var/log/swarmnet-demo-dockerd.log 2>&1 &
    for _ in $(seq 60); do timeout 2 "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    timeout 5 "$DOCKER" info >/dev/null
fi

if [ "$("$DOCKER" info --format '{{.Swarm.ControlAvailable}}')" = "true" ]; then
    scope=global
else
    scope=local
fi

say "building and installing the plugin (SCOPE=$scope)"
make --no-print-directory install PLUGIN_SETTINGS="SCOPE=$scope"
"$DOCKER" plugin ls

if ! "$DOCKER" image inspect busybox:swarmnet-demo >/dev/null 2>&1; then
    say "importing a busybox image from busybox-static"
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs/bin"
    cp /bin/busybox "$rootfs/bin/busybox"
    for app in sh ping ip ifconfig sleep cat nslookup wget true; do ln -s busybox "$rootfs/bin/$app"; done
    tar -C "$rootfs" -c . | "$DOCKER" import - busybox:swarmnet-demo >/dev/null
    rm -rf "$rootfs"
fi

net=swarmnet-demo
"$DOCKER" rm -f swarmnet-demo-a swarmnet-demo-b >/dev/null 2>&1 || true
"$DOCKER" network rm "$net" >/dev/null 2>&1 || true
say "docker network create -d swarmnet-overlay:latest --ipam-driver swarmnet-overlay:latest $net"
extra=()
[ $scope = global ] && extra+=(--attachable)
"$DOCKER" network create -d swarmnet-overlay:latest --ipam-driver swarmnet-overlay:latest \
    "${extra[@]}" "$net"
"$DOCKER" network inspect "$net" --format 'subnet={{range .IPAM.Config}}{{.Subnet}}{{end}} options={{.Options}}'

say "two containers on it"
"$DOCKER" run -d --name swarmnet-demo-a --network "$net" busybox:swarmnet-demo sleep 600 >/dev/null
"$DOCKER" run -d --name swarmnet-demo-b --network "$net" busybox:swarmnet-demo sleep 600 >/dev/null
ip_b=$("$DOCKER" inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" swarmnet-demo-b)
"$DOCKER" exec swarmnet-demo-a ip -o addr show eth0
say "swarmnet-demo-a pings swarmnet-demo-b at $ip_b"
"$DOCKER" exec swarmnet-demo-a ping -c 3 -W 2 "$ip_b"

say "cleaning up the demo containers and network (the plugin stays installed)"
"$DOCKER" rm -f swarmnet-demo-a swarmnet-demo-b >/dev/null
"$DOCKER" network rm "$net" >/dev/null
echo "demo OK. Try it yourself:"
echo "  docker network create -d swarmnet-overlay:latest --ipam-driver swarmnet-overlay:latest mynet"
echo "  docker run --rm -it --network mynet busybox:swarmnet-demo sh"
