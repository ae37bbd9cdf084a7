"""Two and three "nodes" (driver services on fake kernels) sharing a real etcd.

This is the control plane of issue 4 without dockerd: endpoints published on
one node become FDB/neighbour entries on the others, and go away when they
leave or when their node's lease expires.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from core.layout import StoreLayout
from driver import names
from driver.kernel.fake import FakeKernel
from driver.kernel.port import Peer
from plugin.app import STORE_ROOT, create_app
from plugin.controlplane import EtcdControlPlane
from plugin.settings import from_env
from plugin.store.etcd import EtcdKV, EtcdTLS
from plugin.store.memory import MemoryKV
from testbed.etcdserver import EtcdServer
from tests.unit.conftest import Plugin

NET = "q1w2e3r4t5y6u7i8o9p0asdfg"
TTL = 3
LAYOUT = StoreLayout(STORE_ROOT)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Node:
    plugin: Plugin
    control: EtcdControlPlane
    vtep: str

    def peers(self) -> set[Peer]:
        return self.plugin.kernel.peers(NET)


def make_node(
    etcd: EtcdServer,
    vtep: str,
    ttl: int = TTL,
    relays: tuple[str, ...] = (),
    relay_tls: EtcdTLS | None = None,
) -> Node:
    """``relays``: follow the peers through these watch relays instead of etcd."""
    kv = EtcdKV([etcd.url])
    local = MemoryKV()
    watch_kv = EtcdKV(relays, relay_tls, timeout=2) if relays else None
    control = EtcdControlPlane(kv, ttl=ttl, node=vtep, layout=LAYOUT, watch_kv=watch_kv)
    kernel = FakeKernel()
    app = create_app(
        from_env({"PEER_TTL": str(ttl)}), kernel=kernel, local=local, shared=kv, control=control
    )
    plugin = Plugin(client=app.test_client(), kernel=kernel, store=local)
    plugin.ok(
        "/NetworkDriver.DiscoverNew",
        {"DiscoveryType": 1, "DiscoveryData": {"Address": vtep, "Self": True}},
    )
    return Node(plugin, control, vtep)


@pytest.fixture
def nodes(etcd: EtcdServer) -> Iterator[list[Node]]:
    made = [make_node(etcd, f"192.0.2.{i}") for i in (1, 2, 3)]
    yield made
    for n in made:
        n.control.close()


def network_on(node: Node) -> None:
    node.plugin.ok(
        "/NetworkDriver.CreateNetwork",
        {
            "NetworkID": NET,
            "Options": {"com.docker.network.generic": {"swarmnet.vni": "300"}},
            "IPv4Data": [{"Pool": "10.20.0.0/24", "Gateway": "10.20.0.1/24"}],
        },
    )


def start_endpoint(node: Node, eid: str, ip: str) -> Peer:
    node.plugin.ok(
        "/NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": eid, "Interface": {"Address": f"{ip}/24"}},
    )
    node.plugin.ok("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": eid, "SandboxKey": "/x"})
    address = ipaddress.ip_address(ip)
    from driver.mac import from_ip

    return Peer(ip=address, mac=from_ip(address), vtep=ipaddress.ip_address(node.vtep))


def test_endpoints_become_peers_on_the_other_nodes_and_leave_cleanly(nodes: list[Node]) -> None:
    for n in nodes:
        network_on(n)
    a = start_endpoint(nodes[0], "a" * 64, "10.20.0.2")
    b = start_endpoint(nodes[1], "b" * 64, "10.20.0.3")
    wait_for(lambda: nodes[2].peers() == {a, b}, what="node 3 to learn both endpoints")
    wait_for(lambda: nodes[0].peers() == {b}, what="node 1 to learn node 2's endpoint only")
    wait_for(lambda: nodes[1].peers() == {a}, what="node 2 to learn node 1's endpoint only")

    nodes[0].plugin.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": "a" * 64})
    wait_for(lambda: nodes[2].peers() == {b}, what="the left endpoint to disappear")
    wait_for(lambda: nodes[1].peers() == set(), what="node 2 to drop the left endpoint")


def test_a_node_that_joins_late_learns_existing_endpoints(etcd: EtcdServer) -> None:
    first = make_node(etcd, "192.0.2.1")
    try:
        network_on(first)
        a = start_endpoint(first, "a" * 64, "10.20.0.2")
        late = make_node(etcd, "192.0.2.9")
        try:
            network_on(late)
            wait_for(lambda: late.peers() == {a}, what="the late node to list existing peers")
        finally:
            late.control.close()
    finally:
        first.control.close()


def test_a_dead_node_is_forgotten_within_the_lease_ttl(nodes: list[Node]) -> None:
    for n in nodes:
        network_on(n)
    a = start_endpoint(nodes[0], "a" * 64, "10.20.0.2")
    wait_for(lambda: nodes[1].peers() == {a}, what="node 2 to learn the endpoint")
    # Kill node 1's control plane without withdrawing anything: its lease lapses.
    killed_at = time.monotonic()
    nodes[0].control.close()
    wait_for(lambda: nodes[1].peers() == set(), timeout=TTL * 3 + 5, what="lease expiry")
    elapsed = time.monotonic() - killed_at
    # etcd may need up to one extra TTL to notice expiry; never more than that plus slack.
    assert elapsed <= 2 * TTL + 2, elapsed


def test_etcd_outage_keeps_the_kernel_and_publishes_new_joins_when_back(
    etcd: EtcdServer, nodes: list[Node]
) -> None:
    for n in nodes[:2]:
        network_on(n)
    a = start_endpoint(nodes[0], "a" * 64, "10.20.0.2")
    wait_for(lambda: nodes[1].peers() == {a}, what="node 2 to learn the endpoint")

    etcd.stop()
    # The data path does not depend on etcd: programmed entries stay.
    time.sleep(1)
    assert nodes[1].peers() == {a}
    # A join during the outage succeeds locally and is published once etcd is back.
    b = start_endpoint(nodes[0], "b" * 64, "10.20.0.3")
    assert names.short("b" * 64) in nodes[0].plugin.kernel.endpoint_ids(NET)
    etcd.start()
    wait_for(lambda: nodes[1].peers() == {a, b}, timeout=20, what="republish after outage")


def test_periodic_resync_repairs_drift_without_any_new_event(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plugin.controlplane.keeper as cp

    monkeypatch.setattr(cp, "RESYNC_INTERVAL", 1.0)
    a_node, b_node = make_node(etcd, "192.0.2.1"), make_node(etcd, "192.0.2.2")
    try:
        network_on(a_node)
        network_on(b_node)
        a = start_endpoint(a_node, "a" * 64, "10.20.0.2")
        wait_for(lambda: b_node.peers() == {a}, what="node 2 to learn the endpoint")
        # Drift: an entry vanishes from the kernel (e.g. programming failed, or an
        # operator deleted it), another appears that nobody published. No store event
        # follows; the resync compares with the kernel and repairs both.
        stale = Peer(ipaddress.ip_address("10.20.0.99"), "02:42:0a:14:00:63", a.vtep)
        b_node.plugin.kernel.remove_peer(NET, a)
        b_node.plugin.kernel.ensure_peer(NET, stale)
        wait_for(lambda: b_node.peers() == {a}, timeout=TTL * 3, what="resync to repair it")
    finally:
        a_node.control.close()
        b_node.control.close()


def test_a_restart_while_etcd_is_down_keeps_the_programmed_peers(etcd: EtcdServer) -> None:
    a_node, b_node = make_node(etcd, "192.0.2.1"), make_node(etcd, "192.0.2.2")
    restarted: EtcdControlPlane | None = None
    try:
        network_on(a_node)
        network_on(b_node)
        a = start_endpoint(a_node, "a" * 64, "10.20.0.2")
        wait_for(lambda: b_node.peers() == {a}, what="node 2 to learn the endpoint")

        etcd.stop()
        # Restart node 2's plugin: same kernel, same local store, a new control plane
        # that cannot list anything yet. An empty "not read yet" state must not wipe
        # the entries the previous run programmed.
        b_node.control.close()
        restarted = EtcdControlPlane(
            EtcdKV([etcd.url], timeout=1), ttl=TTL, node=b_node.vtep, layout=LAYOUT
        )
        create_app(
            from_env({"PEER_TTL": str(TTL)}),
            kernel=b_node.plugin.kernel,
            local=b_node.plugin.store,
            shared=EtcdKV([etcd.url], timeout=1),
            control=restarted,
        )
        time.sleep(TTL + 1)
        assert b_node.peers() == {a}

        etcd.start()
        wait_for(
            lambda: restarted is not None and restarted.connected.is_set(),
            timeout=20,
            what="the restarted node to reconnect",
        )
        time.sleep(1)
        assert b_node.peers() == {a}
    finally:
        a_node.control.close()
        if restarted is not None:
            restarted.close()


def test_queued_publish_and_withdraw_reach_etcd_in_call_order(nodes: list[Node]) -> None:
    """Join and Leave only queue their records; the keeper keeps the last word per key."""
    node = nodes[0]
    network_on(node)
    wait_for(node.control.connected.is_set, what="the control plane to connect")
    kv = node.control.kv
    eids = [f"{i:02x}" * 32 for i in range(20)]
    ids = {"NetworkID": NET}
    for n, eid in enumerate(eids):
        start_endpoint(node, eid, f"10.20.0.{10 + n}")
    for eid in eids[::2]:  # at once, with the publications possibly still queued
        node.plugin.ok("/NetworkDriver.Leave", {**ids, "EndpointID": eid})
    assert node.control.flush(), "the keeper did not write the queue"
    stored = {k.rsplit("/", 1)[1] for k in kv.list(f"/swarmnet/v1/peers/{NET}/")}
    assert stored == set(eids[1::2])
    # Joined again after the withdrawal: published again.
    node.plugin.ok("/NetworkDriver.Join", {**ids, "EndpointID": eids[0], "SandboxKey": "/x"})
    assert node.control.flush()
    assert kv.get(f"/swarmnet/v1/peers/{NET}/{eids[0]}") is not None


def test_close_writes_what_is_queued(nodes: list[Node]) -> None:
    """The plugin closes its control plane on SIGTERM: a Leave just before still reaches etcd."""
    node = nodes[0]
    network_on(node)
    wait_for(node.control.connected.is_set, what="the control plane to connect")
    eid = "e" * 64
    start_endpoint(node, eid, "10.20.0.50")
    assert node.control.flush()
    node.plugin.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": eid})
    node.control.close()
    assert node.control.kv.get(f"/swarmnet/v1/peers/{NET}/{eid}") is None


def test_status_lists_which_nodes_can_carry_encrypted_networks(etcd: EtcdServer) -> None:
    """Issue 11: each node's record says whether its kernel can do ESP; any node's
    `swarmnet status` (Swarmnet.Status) lists them all."""
    from driver.kernel.fake_ipsec import FakeIpsec

    kv = EtcdKV([etcd.url])
    control = EtcdControlPlane(kv, ttl=TTL, node="192.0.2.9", layout=LAYOUT)
    app = create_app(
        from_env({"PEER_TTL": str(TTL)}),
        kernel=FakeKernel(),
        local=MemoryKV(),
        shared=kv,
        control=control,
        ipsec=FakeIpsec(),
    )
    able = Plugin(client=app.test_client(), kernel=FakeKernel(), store=MemoryKV())
    unable = make_node(etcd, "192.0.2.8")  # a kernel with no IPsec (NoIpsec)
    try:
        wait_for(
            lambda: len(unable.plugin.ok("/Swarmnet.Status")["Nodes"]) == 2,
            what="both node records",
        )
        by_node = {n["Node"]: n for n in able.ok("/Swarmnet.Status")["Nodes"]}
        assert by_node["192.0.2.9"]["ESP"] is True and by_node["192.0.2.9"]["ESPDetail"] == ""
        assert by_node["192.0.2.8"]["ESP"] is False
        assert "no IPsec" in str(by_node["192.0.2.8"]["ESPDetail"])
    finally:
        control.close()
        unable.control.close()


def _lease_of(kv: EtcdKV, key: str) -> int:
    kvs = kv._range(key).get("kvs", [])
    assert kvs, f"{key} is not in etcd"
    return int(kvs[0].get("lease", 0))


def _restart(node: Node, etcd: EtcdServer, stopped_ttl: int | None = 60) -> EtcdControlPlane:
    """The node's next plugin process: same kernel and local store, a new control plane."""
    control = EtcdControlPlane(
        EtcdKV([etcd.url]), ttl=TTL, node=node.vtep, layout=LAYOUT, stopped_ttl=stopped_ttl
    )
    create_app(
        from_env({"PEER_TTL": str(TTL)}),
        kernel=node.plugin.kernel,
        local=node.plugin.store,
        shared=EtcdKV([etcd.url]),
        control=control,
    )
    return control


def test_a_graceful_stop_keeps_the_endpoints_published_until_the_next_process(
    etcd: EtcdServer,
) -> None:
    """Issue 15: `docker plugin disable` (an upgrade) sends SIGTERM, and the plugin may stay
    away longer than PEER_TTL; its containers still run. The records move to a lease of
    ``stopped_ttl``, so the other nodes keep their entries; the next process takes them back
    on its own lease."""
    a_node, b_node = make_node(etcd, "192.0.2.1"), make_node(etcd, "192.0.2.2")
    a_node.control.stopped_ttl = 60
    restarted: EtcdControlPlane | None = None
    try:
        network_on(a_node)
        network_on(b_node)
        a = start_endpoint(a_node, "a" * 64, "10.20.0.2")
        wait_for(lambda: b_node.peers() == {a}, what="node 2 to learn the endpoint")
        kv = b_node.control.kv
        key = f"/swarmnet/v1/peers/{NET}/{'a' * 64}"
        node_key = f"/swarmnet/v1/nodes/{a_node.vtep}"

        a_node.control.close()
        time.sleep(2 * TTL + 2)  # past anything the old lease could still hold
        assert b_node.peers() == {a}
        assert kv.get(key) is not None
        raw = kv.get(node_key)
        assert raw is not None and json.loads(raw)["stopped"] is True
        handed_over = _lease_of(kv, key)

        restarted = _restart(a_node, etcd)
        wait_for(
            lambda: _lease_of(kv, key) not in (0, handed_over)
            and _lease_of(kv, node_key) == _lease_of(kv, key),
            what="the next process to take the records onto its own lease",
        )
        raw = kv.get(node_key)
        assert raw is not None and "stopped" not in json.loads(raw)
        assert b_node.peers() == {a}
    finally:
        b_node.control.close()
        if restarted is not None:
            restarted.close()


def test_a_stop_after_the_next_process_started_hands_nothing_over(etcd: EtcdServer) -> None:
    """gunicorn's SIGHUP starts the new worker before the old one stops: the old one must not
    move the new one's records onto its stop lease (they would vanish when it lapses)."""
    a_node = make_node(etcd, "192.0.2.1")
    a_node.control.stopped_ttl = 60
    network_on(a_node)
    start_endpoint(a_node, "a" * 64, "10.20.0.2")
    assert a_node.control.flush()
    kv = a_node.control.kv
    key = f"/swarmnet/v1/peers/{NET}/{'a' * 64}"
    old = _lease_of(kv, key)
    newer = _restart(a_node, etcd)
    try:
        wait_for(lambda: _lease_of(kv, key) not in (0, old), what="the newer process to publish")
        mine = _lease_of(kv, key)
        a_node.control.close()
        assert _lease_of(kv, key) == mine
        assert _lease_of(kv, f"/swarmnet/v1/nodes/{a_node.vtep}") == mine
    finally:
        newer.close()
