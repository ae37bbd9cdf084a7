"""Issue 15: `docker plugin upgrade`, node by node, under traffic, on the 3-node lab with etcd.

Two versions of the managed plugin go through a local registry (Debian's `docker-registry`,
started in the lab's fabric namespace, so every node reaches it as a swarm's nodes reach theirs):
``v1`` is build/plugin (made by `make plugin` when stale), ``next`` is the same rootfs plus one
file, with another description. Each is `docker plugin create`d once, on node 1, pushed, and
removed there again: Docker 20.10 refuses to hold the same plugin content twice. Every node then
installs ``v1`` from the registry under the alias ``swarmnet-overlay`` and is upgraded to
``next``, one node after the other, as docs/operations.md tells an operator to:

    docker plugin disable -f swarmnet-overlay:latest
    docker plugin upgrade --grant-all-permissions --skip-remote-check \
        swarmnet-overlay:latest REG/swarmnet-overlay:next
    docker plugin set swarmnet-overlay:latest state.source=... run.source=... (the mounts again)
    docker plugin enable swarmnet-overlay:latest

Meanwhile a container on node 1 and one on node 2 ping each other every 10 ms (busybox
``ping -i 0.01``); every lost reply is counted, per node upgraded. Each node's plugin stays
disabled a little longer than PEER_TTL, the lease its records hang on, as a slow pull or an
operator's pace would keep it.

Logs: ``<lab workdir>/logs/node<i>.log`` (dockerd and the plugin), ``etcd.log``, and
``<lab workdir>/registry/registry.log``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import NetNS

from testbed import registry
from testbed.multihost import DEFAULT_SUBNET, Lab, Node
from tests.lab.test_multihost import (
    REPO,
    Endpoint,
    Entries,
    Net,
    endpoints,
    etcd_get,
    kernel_entries,
    log_since,
    log_size,
    make_network,
    plugin_bundle,
    plugin_netns_dir,
    remove_network,
    run_container,
    unreachable,
    wait_converged,
    wait_for,
)

pytestmark = pytest.mark.e2e

ALIAS = "swarmnet-overlay"
PLUGIN = f"{ALIAS}:latest"
REGISTRY_BIN = registry.BIN
# The lab's etcd address (the last host of the subnet); the registry listens there too.
REGISTRY = f"{DEFAULT_SUBNET.network_address + (DEFAULT_SUBNET.num_addresses - 2)}:5000"
PEER_TTL = 5
# Settings that differ from the defaults, so that "kept" means something; the VNI range and
# the pools show up in what a new network gets, so they are seen in effect, not only listed.
SETTINGS = {
    "PEER_TTL": str(PEER_TTL),
    "VNI_RANGE": "700-799",
    "DEFAULT_ADDR_POOLS": "10.123.0.0/16",
    "DEFAULT_ADDR_POOL_MASK_LENGTH": "24",
}
NEXT_MARK = "opt/swarmnet/BUILD"  # in the next bundle's rootfs only
NEXT_DESCRIPTION = " [next build: upgrade test]"
PING_INTERVAL = 0.01
UPGRADE_ORDER = (3, 2, 1)  # workers first, the manager last


# --------------------------------------------------------------------------- the registry


def start_registry(lab: Lab) -> None:
    """docker-registry in the fabric namespace on the lab subnet; lab.down() stops it with
    everything else in that namespace."""
    d = lab.workdir / "registry"
    config = registry.write_config(d, REGISTRY)
    lab._spawn(["ip", "netns", "exec", lab.fabric_netns, REGISTRY_BIN, "serve", str(config)],
               log=d / "registry.log", cgroup=lab.cgroups.tracking / lab.fabric_netns / "registry")
    wait_for(lambda: lab.fabric_exec("curl", "-sf", f"http://{REGISTRY}/v2/",
                                     check=False).returncode == 0,
             what=f"docker-registry on {REGISTRY}", timeout=30)


def next_bundle(v1: Path) -> Path:
    """The next version: v1's rootfs (hard links, so no copy of 60 MB) plus a marker file, and
    its config with another description. Made again every run, from the current v1."""
    out = REPO / "build" / "plugin-next"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(v1 / "rootfs"), str(out / "rootfs")], check=True)
    mark = out / "rootfs" / NEXT_MARK
    mark.unlink(missing_ok=True)  # never write through a hard link into v1's tree
    mark.write_text("next\n")
    config = json.loads((v1 / "config.json").read_text())
    config["description"] += NEXT_DESCRIPTION
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def push(node: Node, bundle: Path, remote: str) -> None:
    node.docker("plugin", "create", remote, str(bundle), timeout=900)
    try:
        node.docker("plugin", "push", remote, timeout=600)
    finally:
        node.docker("plugin", "rm", "-f", remote, timeout=120)


def parallel(fn: Callable[[Node], None], nodes: list[Node]) -> None:
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        for future in [pool.submit(fn, n) for n in nodes]:
            future.result()


# --------------------------------------------------------------------------- pings


@dataclass(frozen=True)
class PingCount:
    sent: int
    lost: int


def count_lost(text: str) -> PingCount:
    """Requests sent and replies lost, from busybox ping's output (stopped by SIGINT).

    Every sequence number below the last one answered must have been answered; the request
    sent last may still be in flight when ping stops, so it is not counted as lost, but any
    earlier one after the last reply is."""
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", text)
    assert m, f"no ping summary in:\n{text[-2000:]}"
    sent = int(m.group(1))
    seqs = {int(s) for s in re.findall(r"seq=(\d+) ttl=\d+ time=\S+ ms$", text, re.M)}
    if not seqs:
        return PingCount(sent, sent)
    last = max(seqs)
    missing = last + 1 - len(seqs)
    unanswered_tail = max(0, sent - 1 - last - 1)
    return PingCount(sent, missing + unanswered_tail)


class Pinger:
    """``src`` pings ``dst`` every 10 ms from a shell inside its container, until stop()."""

    def __init__(self, lab: Lab, src: Endpoint, dst: Endpoint) -> None:
        self.node = lab.node(src.node)
        self.src, self.dst = src, dst
        self.out = "/tmp/ping.out"

    def start(self) -> None:
        self.node.docker("exec", self.src.container, "rm", "-f", self.out)
        self.node.docker("exec", "-d", self.src.container, "sh", "-c",
                         f"exec ping -i {PING_INTERVAL} {self.dst.ip} >{self.out} 2>&1")
        wait_for(lambda: "seq=" in self._read(), what=f"{self.src.name}'s first reply",
                 timeout=20, interval=0.1)

    def _read(self) -> str:
        return self.node.docker("exec", self.src.container, "cat", self.out, check=False).stdout

    def stop(self) -> PingCount:
        self.node.docker("exec", self.src.container, "killall", "-INT", "ping")
        wait_for(lambda: "packets transmitted" in self._read(), what="ping's summary",
                 timeout=20, interval=0.1)
        return count_lost(self._read())


# --------------------------------------------------------------------------- state


def local_store(node: Node) -> dict[str, bytes]:
    """The node's embedded store (SQLite in the plugin's `state` mount), read beside the
    plugin (WAL mode allows a reader while it writes)."""
    db = sqlite3.connect(str(node.plugin_state_source / "store.sqlite"), timeout=10)
    try:
        return {k: bytes(v) for k, v in db.execute("SELECT key, value FROM kv")}
    finally:
        db.close()


def shared_store(lab: Lab) -> dict[str, Any]:
    """Everything of ours in etcd, decoded, but the collector's election key (the manager's
    process holds it, and is elected again when that process restarts) and the ESP probe's
    wording in the node records (each process probes its kernel again)."""
    out: dict[str, Any] = {}
    for key, raw in etcd_get(lab, "/swarmnet/").items():
        if key.endswith("/collector"):
            continue
        value = json.loads(raw)
        if key.startswith("/swarmnet/v1/nodes/"):
            value.pop("esp_detail", None)
        out[key] = value
    return out


@dataclass(frozen=True)
class Kernel:
    """What the node's kernel holds for one network: the namespace (its inode), its links
    (name -> ifindex: a recreated device gets a new index) and the remote peers."""

    netns_inode: int
    links: frozenset[tuple[str, int]]
    entries: Entries


def kernel_state(node: Node, net_id: str) -> Kernel:
    path = plugin_netns_dir(node) / f"sn-{net_id[:12]}"
    with NetNS(str(path), flags=0) as ns:
        links = frozenset((m.get_attr("IFLA_IFNAME"), m["index"]) for m in ns.link("dump"))
    entries = kernel_entries(node, net_id)
    assert entries is not None
    return Kernel(os.stat(path).st_ino, links, entries)


def plugin_info(node: Node) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(node.docker("plugin", "inspect", PLUGIN).stdout)[0]
    return info


def plugin_status(node: Node) -> dict[str, Any]:
    return node.plugin_status(PLUGIN)


def node_record(lab: Lab, node: Node) -> tuple[bool, bool]:
    """(this node has a record in etcd, that record says its plugin is stopped)."""
    for raw in etcd_get(lab, "/swarmnet/v1/nodes/").values():
        rec = json.loads(raw)
        if rec.get("vtep") == str(node.address):
            return True, bool(rec.get("stopped"))
    return False, False


# --------------------------------------------------------------------------- the upgrade


def upgrade_node(lab: Lab, node: Node, remote: str) -> dict[str, float]:
    """The operator's procedure on one node (docs/operations.md); returns its timings."""
    t: dict[str, float] = {}
    # `docker plugin upgrade` replaces the plugin's config with the new one's, mounts and all:
    # the env settings survive, the mount sources fall back to the defaults. Set them again.
    mounts = [m for m in plugin_info(node)["Settings"]["Mounts"]
              if "source" in (m.get("Settable") or [])]
    start = time.monotonic()
    node.docker("plugin", "disable", "-f", PLUGIN, timeout=120)
    t["disable"] = time.monotonic() - start
    mark = time.monotonic()
    node.docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", PLUGIN,
                remote, timeout=600)
    t["upgrade"] = time.monotonic() - mark
    node.docker("plugin", "set", PLUGIN, *(f"{m['Name']}.source={m['Source']}" for m in mounts))
    # Longer than PEER_TTL: the old process's lease alone would have lapsed by now.
    time.sleep(max(0.0, start + PEER_TTL + 2 - time.monotonic()))
    mark = time.monotonic()
    node.docker("plugin", "enable", "--timeout", "60", PLUGIN, timeout=120)
    t["enable"] = time.monotonic() - mark
    t["disabled"] = time.monotonic() - start
    return t


# --------------------------------------------------------------------------- fixtures


@dataclass
class Upgrade:
    lab: Lab
    v1: str
    next: str
    ids: dict[int, str]  # node -> plugin ID


@pytest.fixture(scope="module")
def upgrade(lab_factory: Callable[..., Lab]) -> Iterator[Upgrade]:
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.skip(f"needs {REGISTRY_BIN} (Debian's docker-registry; make deps)")
    lab = lab_factory(nodes=3, daemon_config={"insecure-registries": [REGISTRY]})
    try:
        start_registry(lab)
        v1 = plugin_bundle(lab)
        remotes = {"v1": f"{REGISTRY}/{ALIAS}:v1", "next": f"{REGISTRY}/{ALIAS}:next"}
        push(lab.node(1), v1, remotes["v1"])
        push(lab.node(1), next_bundle(v1), remotes["next"])

        def install(node: Node) -> None:
            values = {"state.source": str(node.plugin_state_source),
                      "run.source": str(node.plugin_run_source),
                      "docker-run.source": "/run/docker",
                      "docker-socket.source": str(node.socket),
                      "ETCD_ENDPOINTS": lab.etcd_url, **SETTINGS}
            node.docker("plugin", "install", "--grant-all-permissions", "--disable", "--alias",
                        ALIAS, remotes["v1"], *(f"{k}={v}" for k, v in values.items()),
                        timeout=600)
            node.docker("plugin", "enable", "--timeout", "60", PLUGIN, timeout=120)

        parallel(install, lab.nodes)
        yield Upgrade(lab, remotes["v1"], remotes["next"],
                      {n.index: node_plugin_id(n) for n in lab.nodes})
    finally:
        lab.down()


def node_plugin_id(node: Node) -> str:
    return node.plugin_id(PLUGIN)


@pytest.fixture(scope="module")
def net(upgrade: Upgrade) -> Net:
    """Our driver and our IPAM, with a container on every node."""
    lab = upgrade.lab
    net = make_network(lab, "up", ipam=PLUGIN)
    for i in (1, 2, 3):
        run_container(lab, i, f"old{i}", net.name)
    wait_converged(lab, net)
    return net


# --------------------------------------------------------------------------- tests


def test_upgrade_node_by_node_loses_no_ping_and_keeps_settings_and_store(
        upgrade: Upgrade, net: Net) -> None:
    lab = upgrade.lab
    eps = {e.name: e for e in wait_converged(lab, net)}
    assert all(plugin_info(n)["PluginReference"] == upgrade.v1 for n in lab.nodes)
    settings_before = {n.index: plugin_info(n)["Settings"]["Env"] for n in lab.nodes}
    local_before = {n.index: local_store(n) for n in lab.nodes}
    shared_before = shared_store(lab)
    kernel_before = {n.index: kernel_state(n, net.id) for n in lab.nodes}
    assert len(kernel_before[1].entries.fdb) == 2, kernel_before[1]  # nodes 2 and 3
    pingers = [Pinger(lab, eps["old1"], eps["old2"]), Pinger(lab, eps["old2"], eps["old1"])]

    results: dict[int, list[PingCount]] = {}
    timings: dict[int, dict[str, float]] = {}
    for i in UPGRADE_ORDER:
        node = lab.node(i)
        mark = log_size(node)
        for p in pingers:
            p.start()
        time.sleep(0.5)
        timings[i] = upgrade_node(lab, node, upgrade.next)
        # Back when the new process has taken its records onto its own lease.
        wait_for(lambda: node_record(lab, lab.node(i)) == (True, False),  # noqa: B023
                 what=f"node{i}'s new plugin process to publish", timeout=60)
        wait_converged(lab, net)
        time.sleep(0.5)
        results[i] = [p.stop() for p in pingers]
        log = log_since(node, mark)
        assert "reconcile: 0 change(s)" in log, f"node{i}: the new process changed the kernel"
        assert "stay published for" in log, f"node{i}: the stopping process handed nothing over"

    lines = [f"node{i}: disabled {timings[i]['disabled']:.1f}s "
             f"(upgrade {timings[i]['upgrade']:.1f}s, enable {timings[i]['enable']:.1f}s); "
             + ", ".join(f"{p.src.name}->{p.dst.name} sent {r.sent} lost {r.lost}"
                         for p, r in zip(pingers, results[i], strict=True))
             for i in UPGRADE_ORDER]
    print("\n" + "\n".join(lines))
    assert all(r.sent >= 300 for rs in results.values() for r in rs), lines
    assert all(r.lost == 0 for rs in results.values() for r in rs), lines

    # The next version runs everywhere, under the same plugin IDs and names.
    for n in lab.nodes:
        info = plugin_info(n)
        assert info["PluginReference"] == upgrade.next and info["Enabled"] is True
        assert info["Id"] == upgrade.ids[n.index]
        assert str(info["Config"]["Description"]).endswith(NEXT_DESCRIPTION)
        assert (n.data_root / "plugins" / upgrade.ids[n.index] / "rootfs" / NEXT_MARK).is_file()
    # Settings, store and kernel carried over.
    for n in lab.nodes:
        assert plugin_info(n)["Settings"]["Env"] == settings_before[n.index]
        env = plugin_info(n)["Settings"]["Env"]
        assert {f"{k}={v}" for k, v in SETTINGS.items()} <= set(env), env
        assert local_store(n) == local_before[n.index], f"node{n.index}'s local store changed"
        assert kernel_state(n, net.id) == kernel_before[n.index], f"node{n.index}'s kernel"
        networks = plugin_status(n)["Networks"]
        assert [(x["NetworkID"], x["Joined"], x["RemotePeers"], x["Broken"])
                for x in networks] == [(net.id, 1, 2, "")], networks
    shared_after = shared_store(lab)
    assert shared_after == shared_before, {
        k: (shared_before.get(k), shared_after.get(k))
        for k in set(shared_before) | set(shared_after)
        if shared_before.get(k) != shared_after.get(k)}
    assert {e.name: e for e in endpoints(lab, net.name)} == eps


def test_after_the_upgrade_new_containers_join_and_reach_the_old_ones(
        upgrade: Upgrade, net: Net) -> None:
    lab = upgrade.lab
    assert all(plugin_info(n)["PluginReference"] == upgrade.next for n in lab.nodes)
    new = [run_container(lab, i, f"new{i}", net.name) for i in (1, 2, 3)]
    eps = wait_converged(lab, net)
    old = [e for e in eps if e.name.startswith("old")]
    assert len(old) == 3
    for src in new:
        assert unreachable(lab, src, [e.ip for e in eps if e.ip != src.ip]) == []
    for src in old:
        assert unreachable(lab, src, [e.ip for e in new]) == []


def test_after_the_upgrade_the_kept_settings_are_in_effect(upgrade: Upgrade) -> None:
    """VNI_RANGE and DEFAULT_ADDR_POOLS were set on v1: a network made after the upgrade gets
    its VNI and its subnet from them."""
    lab = upgrade.lab
    net = make_network(lab, "after", ipam=PLUGIN)
    try:
        a = run_container(lab, 1, "after1", net.name)
        b = run_container(lab, 2, "after2", net.name)
        wait_converged(lab, net)
        vni = json.loads(etcd_get(lab, "/swarmnet/v1/vni")["/swarmnet/v1/vni"])["by_network"][
            net.id]
        assert 700 <= vni <= 799, vni
        subnet = lab.node(1).docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}",
                                    net.name).stdout.strip()
        assert ipaddress.IPv4Network(subnet).subnet_of(ipaddress.IPv4Network("10.123.0.0/16"))
        assert ipaddress.IPv4Network(subnet).prefixlen == 24
        assert unreachable(lab, a, [b.ip]) == [] and unreachable(lab, b, [a.ip]) == []
    finally:
        for i, name in ((1, "after1"), (2, "after2")):
            lab.node(i).docker("rm", "-f", name, check=False)
        remove_network(lab, net)


def test_count_lost_reads_busybox_ping_output() -> None:
    """The loss counter itself: gaps count, the one request in flight at the stop does not."""
    lines = [f"64 bytes from 10.0.0.2: seq={s} ttl=64 time=0.1 ms" for s in (0, 1, 2, 5, 6)]
    text = "\n".join(["PING 10.0.0.2 (10.0.0.2): 56 data bytes", *lines, "",
                      "--- 10.0.0.2 ping statistics ---",
                      "8 packets transmitted, 5 packets received, 37% packet loss"])
    assert count_lost(text) == PingCount(8, 2)  # 3 and 4 lost; 7 was in flight
    assert count_lost(text.replace("8 packets", "9 packets")) == PingCount(9, 3)  # and 7
    assert count_lost(text.replace("8 packets", "7 packets")) == PingCount(7, 2)
    assert count_lost("1 packets transmitted, 0 packets received") == PingCount(1, 1)
