"""Encrypted networks end to end in the driver, with in-memory kernels and xfrm.

Several nodes (driver apps) share one store and a Hub control plane. The fake
xfrm cannot carry packets, so "no loss" is checked as the invariant that makes
it true: whenever a node's out policy pins an SPI, that SA exists on the node
and the identical SA (same key) exists on the receiver. The same flows run on a
real kernel in tests/kernellab/test_encryption_hosts.py, with pings and captures.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.layout import StoreLayout
from driver import names
from driver.config import EncryptionConfig
from driver.ipsec_keys import REQID, KeyRing, spi
from driver.ipsec_policies import BLOCK_PRIORITY, block_policy, in_policy, out_policy
from driver.kernel.fake import FakeKernel
from driver.kernel.fake_ipsec import FakeIpsec
from driver.kernel.port import KernelError, Peer
from driver.kernel.xfrm.types import (
    IPPROTO_ESP,
    Action,
    AeadKey,
    Direction,
    Policy,
    SecurityAssociation,
    Selector,
    XfrmError,
)
from driver.service import NetworkDriverService
from plugin import cli
from plugin.app import STORE_ROOT, create_app
from plugin.settings import from_env
from plugin.store.memory import MemoryKV
from tests.unit.conftest import Plugin
from tests.unit.encryption_hub import Hub

LAYOUT = StoreLayout(STORE_ROOT)

NET = "q1w2e3r4t5y6u7i8o9p0asdfg"  # encrypted
NET2 = "e2e2e2e2e2e2e2e2e2e2e2e2e"  # encrypted too
PLAIN = "zxcvbnmlkjhgfdsapoiuytrew"
PORT = 4790
FAST = EncryptionConfig(poll_interval=0, prune_grace=0, rotation_min_gap=0)

IP = ipaddress.IPv4Address


@dataclass
class Node:
    vtep: IP
    plugin: Plugin
    ipsec: FakeIpsec
    service: NetworkDriverService

    @property
    def kernel(self) -> FakeKernel:
        return self.plugin.kernel

    def ok(self, path: str, body: Any = None) -> Any:
        return self.plugin.ok(path, body)

    def out_policies(self) -> dict[IP, Policy]:
        found = {}
        for p in self.ipsec.policies.values():
            if p.direction == Direction.OUT and p.templates:
                dst = p.templates[0].dst
                assert isinstance(dst, IP)
                found[dst] = p
        return found

    def sa_spis(self) -> set[int]:
        return {sa.spi for sa in self.ipsec.sas.values()}


def make_node(
    hub: Hub,
    shared: MemoryKV,
    vtep: str,
    *,
    ipsec: FakeIpsec | None = None,
    kernel: FakeKernel | None = None,
    local: MemoryKV | None = None,
    config: EncryptionConfig = FAST,
    data_path_addr: bool = True,  # False: the node knows its address only from DiscoverNew
) -> Node:
    base = from_env({})
    address = ipaddress.IPv4Address(vtep)
    settings_ = replace(
        base,
        driver=replace(
            base.driver, data_path_addr=address if data_path_addr else None, encryption=config
        ),
    )
    ipsec = ipsec if ipsec is not None else FakeIpsec()
    kernel = kernel if kernel is not None else FakeKernel()
    local = local if local is not None else MemoryKV()
    app = create_app(
        settings_, kernel=kernel, local=local, shared=shared, control=hub.plane(), ipsec=ipsec
    )
    service = app.extensions["swarmnet"].network
    return Node(address, Plugin(app.test_client(), kernel, local), ipsec, service)


def network_body(net: str = NET, vni: int = 300, encrypted: bool = True, **more: str) -> dict:
    generic = {"swarmnet.vni": str(vni), **more}
    if encrypted:
        generic["encrypted"] = ""
    return {
        "NetworkID": net,
        "Options": {"com.docker.network.generic": generic},
        "IPv4Data": [{"Pool": "10.30.0.0/24", "Gateway": "10.30.0.1/24"}],
    }


def endpoint(node: Node, net: str, eid: str, ip: str) -> None:
    node.ok(
        "/NetworkDriver.CreateEndpoint",
        {"NetworkID": net, "EndpointID": eid, "Interface": {"Address": f"{ip}/24"}},
    )
    node.ok("/NetworkDriver.Join", {"NetworkID": net, "EndpointID": eid, "SandboxKey": "/x"})


def check_pairs(nodes: list[Node]) -> int:
    """Every pinned SPI has its SA on the sender and the identical SA on the receiver.

    Returns how many pairs were checked.
    """
    by_vtep = {n.vtep: n for n in nodes}
    checked = 0
    for node in nodes:
        for peer_vtep, policy in node.out_policies().items():
            (template,) = policy.templates
            key = (peer_vtep, template.spi, IPPROTO_ESP, None)
            sent_with = node.ipsec.sas.get(key)
            assert sent_with is not None, f"{node.vtep} pins {template.spi:#x} with no SA"
            assert sent_with.src == node.vtep
            received_with = by_vtep[peer_vtep].ipsec.sas.get(key)
            assert received_with == sent_with, (
                f"{node.vtep} -> {peer_vtep}: SPI {template.spi:#x} not on the receiver as sent"
            )
            checked += 1
    return checked


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture
def shared() -> MemoryKV:
    return MemoryKV()


@pytest.fixture
def three(hub: Hub, shared: MemoryKV) -> list[Node]:
    return [make_node(hub, shared, f"192.0.2.{i}") for i in (1, 2, 3)]


def with_endpoints(nodes: list[Node], hub: Hub, net: str = NET, encrypted: bool = True) -> None:
    vni = 300 if net == NET else 301 if net == NET2 else 302
    for i, node in enumerate(nodes, start=1):
        node.ok("/NetworkDriver.CreateNetwork", network_body(net, vni, encrypted))
        endpoint(node, net, f"{net[:2]}{i}".ljust(64, "0"), f"10.30.{vni - 300}.{10 + i}")
    hub.deliver()


# -- one node ------------------------------------------------------------------------


def test_an_encrypted_network_gets_its_port_mtu_and_host_policies_before_its_device(
    hub: Hub, shared: MemoryKV
) -> None:
    node = make_node(hub, shared, "192.0.2.1")
    real_ensure = node.kernel.ensure_network

    def ensure_network(spec: Any) -> None:
        # Until the in and block policies exist, nothing would stop plaintext.
        assert set(node.ipsec.policies.values()) == {block_policy(PORT), in_policy(PORT)}
        real_ensure(spec)

    node.kernel.ensure_network = ensure_network  # type: ignore[method-assign]
    node.ok("/NetworkDriver.CreateNetwork", network_body())
    node.ok("/NetworkDriver.CreateNetwork", network_body())  # Docker retries
    spec = node.kernel.networks[names.short(NET)].spec
    assert (spec.vxlan_port, spec.mtu) == (PORT, 1424)  # 1500 - 50 VXLAN - 26 ESP
    assert node.ipsec.sas == {}  # no peer yet
    ring = KeyRing.from_json(shared.get(LAYOUT.ipsec_keys) or b"")
    assert ring.newest.number == 1

    node.ok("/NetworkDriver.CreateNetwork", network_body(PLAIN, 302, encrypted=False))
    plain = node.kernel.networks[names.short(PLAIN)].spec
    assert (plain.vxlan_port, plain.mtu) == (4789, 1450)

    endpoint(node, NET, "a" * 64, "10.30.0.2")
    info = node.ok("/NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": "a" * 64})
    assert info["Value"]["encrypted"] is True and info["Value"]["mtu"] == 1424


def test_an_explicit_mtu_is_kept_on_an_encrypted_network(hub: Hub, shared: MemoryKV) -> None:
    node = make_node(hub, shared, "192.0.2.1")
    node.ok(
        "/NetworkDriver.CreateNetwork",
        network_body(**{"com.docker.network.driver.mtu": "1300"}),
    )
    assert node.kernel.networks[names.short(NET)].spec.mtu == 1300


def test_plain_networks_touch_no_xfrm(hub: Hub, shared: MemoryKV) -> None:
    nodes = [make_node(hub, shared, f"192.0.2.{i}") for i in (1, 2)]
    with_endpoints(nodes, hub, PLAIN, encrypted=False)
    for node in nodes:
        # One probe at most (at start, in a throwaway namespace, for the node record
        # that `swarmnet status` reads); nothing installed.
        assert node.ipsec.policies == {} and node.ipsec.sas == {} and node.ipsec.probes <= 1
        assert len(node.kernel.peers(PLAIN)) == 1
    assert shared.list("/swarmnet/v1/ipsec/") == {}


# -- pairs -----------------------------------------------------------------------------


def test_every_pair_sharing_an_encrypted_network_gets_matching_sas(
    three: list[Node], hub: Hub, shared: MemoryKV
) -> None:
    with_endpoints(three, hub)
    assert check_pairs(three) == 6  # 3 nodes, each to 2 others
    a, b, _ = three
    # Generation 1, indexes claimed in VTEP order: a=1, b=2, c=3.
    assert a.out_policies()[b.vtep].templates[0].spi == spi(1, 1, 2) == 0x02001002
    assert a.sa_spis() == {spi(1, 1, 2), spi(1, 1, 3), spi(1, 2, 1), spi(1, 3, 1)}
    for node in three:
        assert block_policy(PORT) in node.ipsec.policies.values()
        assert in_policy(PORT) in node.ipsec.policies.values()
        assert all(sa.reqid == REQID for sa in node.ipsec.sas.values())
    keys = {sa.aead.key for n in three for sa in n.ipsec.sas.values() if sa.aead}
    assert len(keys) == 6  # one key per ordered pair
    assert set(shared.list(LAYOUT.ipsec_acks)) == {LAYOUT.ipsec_acks + str(n.vtep) for n in three}


def test_a_peers_sas_come_before_its_fdb_entries_and_go_after(hub: Hub, shared: MemoryKV) -> None:
    a, b = (make_node(hub, shared, f"192.0.2.{i}") for i in (1, 2))
    events: list[str] = []
    real_add, real_remove = a.kernel.ensure_peer, a.kernel.remove_peer

    def ensure_peer(network_id: str, peer: Peer) -> None:
        assert peer.vtep in a.out_policies(), "FDB entry before the peer's out policy"
        assert any(sa.src == peer.vtep for sa in a.ipsec.sas.values()), "no inbound SA yet"
        events.append("fdb+")
        real_add(network_id, peer)

    def remove_peer(network_id: str, peer: Peer) -> None:
        assert peer.vtep in a.out_policies(), "the pair went before the FDB entry"
        events.append("fdb-")
        real_remove(network_id, peer)

    a.kernel.ensure_peer = ensure_peer  # type: ignore[method-assign]
    a.kernel.remove_peer = remove_peer  # type: ignore[method-assign]
    with_endpoints([a, b], hub)
    b.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": "q12".ljust(64, "0")})
    hub.deliver()
    assert events == ["fdb+", "fdb-"]
    assert a.ipsec.sas == {} and a.out_policies() == {}
    assert set(a.ipsec.policies.values()) == {block_policy(PORT), in_policy(PORT)}


def test_pairs_exist_only_while_the_nodes_share_an_encrypted_network(
    three: list[Node], hub: Hub
) -> None:
    a, b, c = three
    with_endpoints(three, hub, NET)
    with_endpoints([a, b], hub, NET2)
    with_endpoints(three, hub, PLAIN, encrypted=False)
    assert check_pairs(three) == 6

    # c leaves NET, its only encrypted network: c keeps nothing, a and b drop c.
    c.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": "q13".ljust(64, "0")})
    c.ok("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": "q13".ljust(64, "0")})
    c.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    hub.deliver()
    assert c.ipsec.sas == {} and c.ipsec.policies == {}
    for node in (a, b):
        assert c.vtep not in node.out_policies()
        assert all(c.vtep not in (sa.src, sa.dst) for sa in node.ipsec.sas.values())
    assert check_pairs(three) == 2
    assert len(c.kernel.peers(PLAIN)) == 2  # the plain network does not care

    # a and b still share NET2 after NET goes from a.
    a.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})  # endpoints left behind: cleaned
    hub.deliver()
    assert check_pairs(three) == 2
    a.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET2})
    hub.deliver()
    assert a.ipsec.sas == {} and a.ipsec.policies == {}
    assert b.ipsec.sas == {} and b.out_policies() == {}
    for node in three:
        assert node.ipsec.policies == {} or node is b  # b still has NET and NET2
    b.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    b.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET2})
    assert b.ipsec.policies == {} and b.ipsec.sas == {}


# -- rotation ----------------------------------------------------------------------------


def test_rotation_installs_inbound_first_then_switches_then_prunes(
    three: list[Node], hub: Hub, shared: MemoryKV
) -> None:
    a, b, c = three
    with_endpoints(three, hub)
    reply = a.ok("/Swarmnet.RotateKeys")
    assert reply == {"Previous": 1, "Generation": 2}
    check_pairs(three)
    # a learned generation 2 at once and accepts it, but nobody has told a they accept it.
    assert {spi(2, 2, 1), spi(2, 3, 1)} <= a.sa_spis()
    assert a.out_policies()[b.vtep].templates[0].spi == spi(1, 1, 2)

    b.service.encryption.tick()  # b: inbound 2; a reported 2, so b sends 2 to a already
    check_pairs(three)
    assert b.out_policies()[a.vtep].templates[0].spi == spi(2, 2, 1)
    assert b.out_policies()[c.vtep].templates[0].spi == spi(1, 2, 3)  # c is behind

    for node in (c, a, b, c, a, b):
        node.service.encryption.tick()
        check_pairs(three)
    for node in three:
        # Only generation 2 is left: one out SA and one in SA per peer.
        assert {s >> 24 for s in node.sa_spis()} == {3}
        assert len(node.ipsec.sas) == 4


def test_inbound_sas_stay_for_a_grace_period_after_the_sender_switched(
    hub: Hub, shared: MemoryKV
) -> None:
    config = replace(FAST, prune_grace=10.0)
    a, b = (make_node(hub, shared, f"192.0.2.{i}", config=config) for i in (1, 2))
    now = [100.0]
    for node in (a, b):
        node.service.encryption._clock = lambda: now[0]
    with_endpoints([a, b], hub)
    a.ok("/Swarmnet.RotateKeys")
    for node in (b, a, b, a):
        node.service.encryption.tick()
    old_in = spi(1, 2, 1)
    assert old_in in a.sa_spis()  # b switched, but a packet sealed with 1 may be on its way
    now[0] += 9
    a.service.encryption.tick()
    assert old_in in a.sa_spis()
    now[0] += 2
    a.service.encryption.tick()
    assert old_in not in a.sa_spis()
    check_pairs([a, b])


def test_rotation_needs_keys_and_a_gap(hub: Hub, shared: MemoryKV) -> None:
    node = make_node(hub, shared, "192.0.2.1", config=replace(FAST, rotation_min_gap=3600))
    status, reply = node.plugin.call("/Swarmnet.RotateKeys")
    assert status == 409 and "no IPsec keys" in reply["Err"]
    node.ok("/NetworkDriver.CreateNetwork", network_body())
    status, reply = node.plugin.call("/Swarmnet.RotateKeys")
    assert status == 409 and "3600s apart" in reply["Err"]


def test_keys_rotate_on_the_interval(hub: Hub, shared: MemoryKV) -> None:
    nodes = [
        make_node(hub, shared, f"192.0.2.{i}", config=replace(FAST, rotation_interval=3600))
        for i in (1, 2)
    ]
    with_endpoints(nodes, hub)
    for node in nodes:
        node.service.encryption.tick()
    assert KeyRing.from_json(shared.get(LAYOUT.ipsec_keys) or b"").newest.number == 1
    # Age the generation as if 12 h had passed: the next round of either node rotates, once.
    ring = KeyRing.from_json(shared.get(LAYOUT.ipsec_keys) or b"")
    old = replace(ring.newest, created=ring.newest.created - 3601)
    shared.put(LAYOUT.ipsec_keys, KeyRing((old,)).to_json())
    for _ in range(3):
        for node in nodes:
            node.service.encryption.tick()
            check_pairs(nodes)
    ring = KeyRing.from_json(shared.get(LAYOUT.ipsec_keys) or b"")
    assert [g.number for g in ring.generations] == [1, 2]
    for node in nodes:
        assert {s >> 24 for s in node.sa_spis()} == {3}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["a", "b", "c", "rotate"]), min_size=1, max_size=40))
def test_no_interleaving_of_rounds_and_rotations_breaks_a_pair(steps: list[str]) -> None:
    hub, shared = Hub(), MemoryKV()
    nodes = [make_node(hub, shared, f"192.0.2.{i}") for i in (1, 2, 3)]
    with_endpoints(nodes, hub)
    by_name = dict(zip("abc", nodes, strict=True))
    rounds_since = dict.fromkeys("abc", 2)
    for step in steps:
        if step == "rotate":
            # The minimum gap's promise: each node has had two rounds since the last rotation.
            if min(rounds_since.values()) < 2:
                continue
            nodes[0].service.rotate_keys()
            rounds_since = dict.fromkeys("abc", 0)
        else:
            by_name[step].service.encryption.tick()
            rounds_since[step] += 1
        check_pairs(nodes)
    for _ in range(3):
        for node in nodes:
            node.service.encryption.tick()
            check_pairs(nodes)
    newest = KeyRing.from_json(shared.get(LAYOUT.ipsec_keys) or b"").newest.number
    for node in nodes:
        assert {s >> 24 for s in node.sa_spis()} == {(newest % 255) + 1}


# -- fail closed, errors ----------------------------------------------------------------


def test_a_kernel_without_esp_refuses_encrypted_networks_and_leaves_nothing(
    hub: Hub, shared: MemoryKV
) -> None:
    node = make_node(hub, shared, "192.0.2.1", ipsec=FakeIpsec(supported=False))
    # The manager allocates (swarmkit would not show a refusal to anyone); every node
    # that cannot encrypt refuses Join on it, and that message reaches the user.
    node.ok("/NetworkDriver.AllocateNetwork", {"NetworkID": NET, "Options": {"encrypted": ""}})
    for _ in range(2):
        node.ok("/NetworkDriver.CreateNetwork", network_body())
        ep = {"NetworkID": NET, "EndpointID": "a" * 64, "Interface": {"Address": "10.30.0.2/24"}}
        node.ok("/NetworkDriver.CreateEndpoint", ep)  # nothing made; Join refuses
        status, reply = node.plugin.call(
            "/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": "a" * 64, "SandboxKey": "/x"}
        )
        assert status == 501, reply
        for needed in ("encrypted", "rfc4106(gcm(aes))", "esp4", "CONFIG_INET_ESP", "clear"):
            assert needed in reply["Err"]
    assert node.kernel.networks == {}
    assert node.ipsec.policies == {} and node.ipsec.sas == {}
    assert node.plugin.store.list("/swarmnet/v1/local/networks/") == {}
    # A plain network is fine on the same host.
    node.ok("/NetworkDriver.CreateNetwork", network_body(PLAIN, 302, encrypted=False))


def test_status_and_the_node_record_say_this_node_cannot_encrypt(
    hub: Hub, shared: MemoryKV, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from werkzeug.serving import make_server

    node = make_node(hub, shared, "192.0.2.1", ipsec=FakeIpsec(supported=False))
    plane = hub.planes[-1]
    assert plane.announced["esp"] is False and "esp4" in str(plane.announced["esp_detail"])
    nodes = node.ok("/Swarmnet.Status")["Nodes"]
    assert [n["Node"] for n in nodes] == ["192.0.2.1"]
    assert nodes[0]["ESP"] is False and "esp4" in nodes[0]["ESPDetail"]
    able = make_node(hub, shared, "192.0.2.2")
    assert able.ok("/Swarmnet.Status")["Nodes"] == [
        {"Node": "192.0.2.2", "ESP": True, "ESPDetail": ""}
    ]

    sock = tmp_path / "p.sock"
    server = make_server(f"unix://{sock}", 0, node.plugin.client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert cli.main(["status", "--socket", str(sock)]) == 0
    finally:
        server.shutdown()
        thread.join(5)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("192.0.2.1 "))
    assert "no: this kernel cannot do IPsec ESP" in line and "esp4" in line, out


def test_join_fails_closed_when_the_kernel_lost_esp(hub: Hub, shared: MemoryKV) -> None:
    node = make_node(hub, shared, "192.0.2.1")
    node.ok("/NetworkDriver.CreateNetwork", network_body())
    node.ok(
        "/NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": "a" * 64, "Interface": {"Address": "10.30.0.2/24"}},
    )
    node.ipsec.supported, node.ipsec.missing = False, ("esp4",)
    status, reply = node.plugin.call(
        "/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": "a" * 64, "SandboxKey": "/x"}
    )
    assert status == 501 and "esp4" in reply["Err"]
    assert node.kernel.endpoint_ids(NET) == set()


def test_a_failed_create_leaves_no_policy_device_or_record(hub: Hub, shared: MemoryKV) -> None:
    node = make_node(hub, shared, "192.0.2.1")
    node.ipsec.fail_next["update_policy"] = XfrmError(1, "updating policy out 0.0.0.0/0")
    status, reply = node.plugin.call("/NetworkDriver.CreateNetwork", network_body())
    assert status == 500 and "updating policy" in reply["Err"]
    node.kernel.fail_next["ensure_network"] = KernelError("no more VXLAN devices")
    status, reply = node.plugin.call("/NetworkDriver.CreateNetwork", network_body())
    assert status == 500 and "no more VXLAN devices" in reply["Err"]
    assert node.kernel.networks == {}
    assert node.ipsec.policies == {} and node.ipsec.sas == {}
    assert node.plugin.store.list("/swarmnet/v1/local/networks/") == {}
    node.ok("/NetworkDriver.CreateNetwork", network_body())  # and it works afterwards


def test_a_peer_that_cannot_be_programmed_gets_no_fdb_entry(hub: Hub, shared: MemoryKV) -> None:
    a, b = (make_node(hub, shared, f"192.0.2.{i}") for i in (1, 2))
    for i, node in enumerate((a, b), start=1):
        node.ok("/NetworkDriver.CreateNetwork", network_body())
        endpoint(node, NET, f"e{i}".ljust(64, "0"), f"10.30.0.{10 + i}")
    a.ipsec.fail_next["ensure_sa"] = XfrmError(12, "adding SA esp spi 0x02002001")
    with pytest.raises(XfrmError):
        hub.deliver()
    assert a.kernel.peers(NET) == set()  # traffic to b cannot even be addressed
    assert a.out_policies() == {}  # and would meet the block policy
    hub.deliver()  # the next snapshot (or the background round) repairs it
    assert len(a.kernel.peers(NET)) == 1
    check_pairs([a, b])


def test_an_unknown_local_address_blocks_peers_instead_of_guessing(shared: MemoryKV) -> None:
    hub = Hub()
    a = make_node(hub, shared, "192.0.2.1", data_path_addr=False)  # DiscoverNew not seen
    b = make_node(hub, shared, "192.0.2.2")
    with_endpoints([b], hub)
    a.ok("/NetworkDriver.CreateNetwork", network_body())
    with pytest.raises(Exception, match="data-path address is not known"):
        hub.deliver()
    assert a.kernel.peers(NET) == set()


# -- restart -------------------------------------------------------------------------------


def test_restart_reinstalls_what_the_store_justifies_and_removes_the_rest(
    hub: Hub, shared: MemoryKV
) -> None:
    a, b = (make_node(hub, shared, f"192.0.2.{i}") for i in (1, 2))
    with_endpoints([a, b], hub)
    wanted_sas, wanted_policies = dict(a.ipsec.sas), dict(a.ipsec.policies)
    gone = IP("192.0.2.99")
    junk_sa = SecurityAssociation(gone, a.vtep, spi(1, 99, 1), REQID, AeadKey(bytes(20)))
    junk_out = out_policy(a.vtep, gone, spi(1, 1, 99), PORT)
    old_block = block_policy(4799)  # ENCRYPTED_VXLAN_PORT was changed since
    theirs_sa = SecurityAssociation(a.vtep, gone, 0x777, 0x1234, AeadKey(bytes(20)))
    theirs_policy = Policy(Selector.any(4, dport=500), Direction.OUT, 5, Action.ALLOW)
    for sa in (junk_sa, theirs_sa):
        a.ipsec.ensure_sa(sa)
    for policy in (junk_out, old_block, theirs_policy):
        a.ipsec.update_policy(policy)
    a.ipsec.delete_sa(next(iter(wanted_sas.values())).id)  # and one of ours went missing

    again = make_node(
        Hub(), shared, "192.0.2.1", ipsec=a.ipsec, kernel=a.kernel, local=a.plugin.store
    )
    assert {k: v for k, v in again.ipsec.sas.items() if v.reqid == REQID} == wanted_sas
    assert theirs_sa in again.ipsec.sas.values()
    assert set(again.ipsec.policies.values()) == {*wanted_policies.values(), theirs_policy}
    check_pairs([again, b])


def test_restart_without_encrypted_networks_removes_everything_of_ours(
    hub: Hub, shared: MemoryKV
) -> None:
    ipsec = FakeIpsec()
    ipsec.update_policy(block_policy(PORT))
    ipsec.update_policy(in_policy(PORT))
    ipsec.ensure_sa(
        SecurityAssociation(
            IP("192.0.2.9"), IP("192.0.2.1"), spi(1, 9, 1), REQID, AeadKey(bytes(20))
        )
    )
    theirs = Policy(Selector.any(4, dport=PORT), Direction.OUT, BLOCK_PRIORITY + 1, Action.BLOCK)
    ipsec.update_policy(theirs)
    make_node(hub, shared, "192.0.2.1", ipsec=ipsec)
    assert ipsec.sas == {} and list(ipsec.policies.values()) == [theirs]


# -- secrets ----------------------------------------------------------------------------------


def secret_forms(secret: bytes) -> list[str]:
    return [secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]]


def test_key_material_never_reaches_logs_replies_or_errors(
    hub: Hub, shared: MemoryKV, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    nodes = [make_node(hub, shared, f"192.0.2.{i}") for i in (1, 2)]
    replies: list[str] = []
    with_endpoints(nodes, hub)
    for node in nodes:
        replies.append(
            str(
                node.ok(
                    "/NetworkDriver.EndpointOperInfo",
                    {"NetworkID": NET, "EndpointID": f"q1{nodes.index(node) + 1}".ljust(64, "0")},
                )
            )
        )
    replies.append(str(nodes[0].ok("/Swarmnet.RotateKeys")))
    for node in nodes * 2:
        node.service.encryption.tick()
    # A conflicting SA with our SPI: the error names the SA, never a key.
    a = nodes[0]
    clash = replace(next(iter(a.ipsec.sas.values())), aead=AeadKey(b"\x01" * 20))
    with pytest.raises(XfrmError) as caught:
        a.ipsec.ensure_sa(clash)
    replies.append(str(caught.value))

    ring = KeyRing.from_json(shared.get(LAYOUT.ipsec_keys) or b"")
    secrets_ = [g.master for g in ring.generations]
    for node in nodes:
        for _, obj in node.ipsec.journal:
            if isinstance(obj, SecurityAssociation) and obj.aead is not None:
                secrets_.append(obj.aead.key)
    assert len(secrets_) > 4
    text = caplog.text + "\n".join(replies)
    assert "ipsec:" in caplog.text  # the flow did log
    for secret in secrets_:
        for form in secret_forms(secret):
            assert form not in text


# -- the command ----------------------------------------------------------------------------


def test_swarmnet_rotate_keys_calls_the_plugin_socket(
    hub: Hub, shared: MemoryKV, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from werkzeug.serving import make_server

    node = make_node(hub, shared, "192.0.2.1")
    node.ok("/NetworkDriver.CreateNetwork", network_body())
    sock = tmp_path / "p.sock"
    server = make_server(f"unix://{sock}", 0, node.plugin.client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert cli.main(["rotate-keys", "--socket", str(sock)]) == 0
        assert "generation 1 -> 2" in capsys.readouterr().out
        assert KeyRing.from_json(shared.get(LAYOUT.ipsec_keys) or b"").newest.number == 2
    finally:
        server.shutdown()
        thread.join(5)
    assert cli.main(["rotate-keys", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "cannot reach the plugin" in capsys.readouterr().err


def test_settings_for_encryption() -> None:
    cfg = from_env({}).driver.encryption
    assert (cfg.port, cfg.rotation_interval) == (4790, 12 * 3600)
    cfg = from_env({"ENCRYPTED_VXLAN_PORT": "4800", "KEY_ROTATION_INTERVAL": "90m"}).driver
    assert (cfg.encryption.port, cfg.encryption.rotation_interval) == (4800, 5400)
    assert from_env({"KEY_ROTATION_INTERVAL": "0"}).driver.encryption.rotation_interval == 0
    from plugin.settings import SettingsError

    for env, field in (
        ({"ENCRYPTED_VXLAN_PORT": "4789"}, "ENCRYPTED_VXLAN_PORT"),
        ({"VXLAN_PORT": "4790"}, "ENCRYPTED_VXLAN_PORT"),
        ({"ENCRYPTED_VXLAN_PORT": "0"}, "ENCRYPTED_VXLAN_PORT"),
        ({"KEY_ROTATION_INTERVAL": "10s"}, "KEY_ROTATION_INTERVAL"),
        ({"KEY_ROTATION_INTERVAL": "weekly"}, "KEY_ROTATION_INTERVAL"),
    ):
        with pytest.raises(SettingsError, match=field):
            from_env(env)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = {t.name for t in threading.enumerate()}
    yield
    assert "swarmnet-ipsec" not in {t.name for t in threading.enumerate()} - before
