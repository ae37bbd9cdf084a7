"""What the lab asks of its nodes' dockerds: the image, the swarm, the managed plugin."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.dockerd import docker_ping
from testbed.image import busybox_tar
from testbed.multihost.node import Node
from testbed.multihost.spawn import parallel
from testbed.proc import BedError, tail


def import_image(nodes: Sequence[Node], tar_path: Path) -> None:
    tar = busybox_tar(tar_path)
    parallel(lambda node: node.import_busybox(tar), nodes)


def form_swarm(nodes: Sequence[Node]) -> None:
    """``swarm init`` on the first node; the other managers join one at a time, then the workers."""
    first = nodes[0]
    addr = str(first.address)
    first.docker("swarm", "init", "--advertise-addr", addr, "--data-path-addr", addr,
                 "--listen-addr", f"{addr}:2377")
    tokens = {role: first.docker("swarm", "join-token", "-q", role).stdout.strip()
              for role in ("manager", "worker")}

    def join(node: Node) -> None:
        a = str(node.address)
        node.docker("swarm", "join", "--token",
                    tokens["manager" if node.is_manager else "worker"],
                    "--advertise-addr", a, "--data-path-addr", a,
                    "--listen-addr", f"{a}:2377", f"{addr}:2377", timeout=120)

    # Managers one at a time (each changes the raft membership), workers all at once.
    for node in nodes[1:]:
        if node.is_manager:
            join(node)
    parallel(join, [n for n in nodes[1:] if not n.is_manager])


def manager(nodes: Sequence[Node]) -> Node:
    """A running manager node (the first unless it is down)."""
    for node in nodes:
        if node.is_manager and docker_ping(node.socket):
            return node
    raise BedError("no manager node is running")


def swarm_nodes(nodes: Sequence[Node]) -> dict[str, tuple[str, str]]:
    """Hostname -> (status, availability) as the swarm managers see it."""
    out = manager(nodes).docker("node", "ls", "--format", "{{json .}}").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    # A node that has just joined has no description (so no hostname) for a moment.
    return {r["Hostname"]: (r["Status"], r["Availability"]) for r in rows if r["Hostname"]}


def wait_swarm_ready(nodes: Sequence[Node], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    want = {n.hostname for n in nodes}
    while True:
        seen = {h: s for h, (s, _) in swarm_nodes(nodes).items() if h in want}
        if len(seen) == len(want) and all(s == "Ready" for s in seen.values()):
            return
        if time.monotonic() > deadline:
            raise BedError(f"swarm nodes not all Ready after {timeout:g}s: {seen}")
        time.sleep(0.2)


def install_plugin(nodes: Sequence[Node], plugin_dir: Path, name: str, etcd_url: str,
                   settings: Mapping[str, str] | None, timeout: float) -> None:
    """Create, configure and enable a managed plugin on every node, each with its own
    state and run directories."""
    if not (plugin_dir / "config.json").is_file() or not (plugin_dir / "rootfs").is_dir():
        raise BedError(f"{plugin_dir} is not a plugin build (config.json + rootfs/); "
                       "run `make plugin` first")

    def install(node: Node) -> None:
        values = {"state.source": str(node.plugin_state_source),
                  "run.source": str(node.plugin_run_source),
                  # dockerd's exec root as the node's mount namespace sees it, and its API.
                  "docker-run.source": "/run/docker",
                  "docker-socket.source": str(node.socket),
                  "ETCD_ENDPOINTS": etcd_url, **(settings or {})}
        node.remove_plugin(name)
        node.docker("plugin", "create", name, str(plugin_dir), timeout=timeout)
        node.docker("plugin", "set", name, *(f"{k}={v}" for k, v in values.items()))
        result = node.docker("plugin", "enable", "--timeout", "60", name, check=False,
                             timeout=120)
        if result.returncode != 0:
            raise BedError(f"plugin enable on {node.netns} failed: {result.stderr.strip()}\n"
                           f"dockerd log {node.log}:\n{tail(node.log)}")

    parallel(install, nodes)
