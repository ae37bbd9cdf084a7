"""Issue 11: duplicate --ip and a second network with the same --subnet are refused where
the protocol tells them from a replay, and replays keep working.

A RequestAddress carries the endpoint's MAC (``com.docker.network.endpoint.macaddress``)
because GetCapabilities says RequiresMACAddress. A replay (a retry, dockerd's restart replay,
a node mirroring the manager) asks with the same MAC or with none; a second container asks
with its own.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from ipam.config import IpamConfig
from ipam.errors import AddressInUse, PoolOverlap
from ipam.messages import MAC_OPTION
from ipam.service import IpamService
from plugin.errors import status_of
from tests.unit.ipam.fakes import CasKV
from tests.unit.ipam.helpers import (
    GATEWAY,
    GLOBAL,
    LAYOUT,
    LOCAL,
    SERIAL,
    address,
    pool,
    service,
)

MAC_A = {MAC_OPTION: "02:42:0a:00:00:aa"}
MAC_B = {MAC_OPTION: "02:42:0a:00:00:bb"}


def standalone(kv: CasKV | None = None) -> IpamService:
    kv = kv if kv is not None else CasKV()
    return IpamService(
        local=kv,
        shared=kv,
        layout=LAYOUT,
        config=IpamConfig.from_strings("10.10.0.0/22", "24", standalone=True),
        host_networks=lambda: [],
    )


def test_a_second_container_asking_for_a_held_address_is_refused() -> None:
    kv = CasKV()
    svc = service(local=kv, shared=kv)
    pid = pool(svc, "10.99.0.0/24", space=LOCAL)
    assert address(svc, pid, "10.99.0.5", MAC_A) == "10.99.0.5/24"
    before = kv.snapshot()
    with pytest.raises(AddressInUse) as e:
        address(svc, pid, "10.99.0.5", MAC_B)
    assert str(e.value) == (
        "Address 10.99.0.5 is already in use by another container on this network "
        "(pool 10.99.0.0/24); choose another --ip, or leave --ip out to get a free address"
    )
    assert status_of(e.value) == 409
    assert kv.snapshot() == before


def test_the_same_endpoint_again_or_a_request_without_mac_is_a_replay() -> None:
    svc = service()
    pid = pool(svc, "10.99.0.0/24", space=LOCAL)
    assert address(svc, pid, "10.99.0.5", MAC_A) == "10.99.0.5/24"
    # A retry or dockerd's restart replay: the same MAC.
    assert address(svc, pid, "10.99.0.5", MAC_A) == "10.99.0.5/24"
    # The MAC text as libnetwork may format it.
    assert address(svc, pid, "10.99.0.5", {MAC_OPTION: "02:42:0A:00:00:AA"}) == "10.99.0.5/24"
    # No owner (an aux address, swarmkit's allocator, a replay without options): granted.
    assert address(svc, pid, "10.99.0.5") == "10.99.0.5/24"
    with pytest.raises(AddressInUse):
        address(svc, pid, "10.99.0.5", MAC_B)


def test_a_dynamically_given_address_has_an_owner_too() -> None:
    svc = service()
    pid = pool(svc, "10.99.0.0/24", space=LOCAL)
    assert address(svc, pid, "10.99.0.1", GATEWAY) == "10.99.0.1/24"
    assert address(svc, pid, options=MAC_A) == "10.99.0.2/24"
    with pytest.raises(AddressInUse):
        address(svc, pid, "10.99.0.2", MAC_B)


def test_released_address_can_go_to_another_container() -> None:
    svc = service()
    pid = pool(svc, "10.99.0.0/24", space=LOCAL)
    address(svc, pid, "10.99.0.5", MAC_A)
    svc.release_address(pid, ip_address("10.99.0.5"))
    assert address(svc, pid, "10.99.0.5", MAC_B) == "10.99.0.5/24"
    with pytest.raises(AddressInUse):
        address(svc, pid, "10.99.0.5", MAC_A)


def test_an_address_held_without_owner_is_claimed_by_the_first_endpoint() -> None:
    # An aux address (no options), or a record written before owners were kept.
    svc = service()
    pid = pool(svc, "10.99.0.0/24", space=LOCAL)
    address(svc, pid, "10.99.0.9")
    assert address(svc, pid, "10.99.0.9", MAC_A) == "10.99.0.9/24"
    with pytest.raises(AddressInUse):
        address(svc, pid, "10.99.0.9", MAC_B)


def test_manager_choices_replayed_on_a_node_with_macs_all_succeed() -> None:
    svc = service("10.10.0.0/22")
    gpid = pool(svc, options=SERIAL)
    tasks = [address(svc, gpid, options=SERIAL) for _ in range(3)]
    lpid = pool(svc, gpid.split("/", 1)[1], space=LOCAL)
    macs = [{MAC_OPTION: f"02:42:0a:00:00:0{i}"} for i in range(3)]
    got = [address(svc, lpid, t.split("/")[0], m) for t, m in zip(tasks, macs, strict=True)]
    assert got == tasks
    # The global space has no owners: a new leader's replay succeeds.
    assert [address(svc, gpid, t.split("/")[0]) for t in tasks] == tasks


def test_standalone_refuses_a_second_network_with_the_same_subnet() -> None:
    kv = CasKV()
    svc = standalone(kv)
    assert svc.capabilities() == (True, False)  # dockerd never replays: state persists
    pool(svc, "10.99.0.0/30", space=LOCAL)
    before = kv.snapshot()
    with pytest.raises(PoolOverlap) as e:
        pool(svc, "10.99.0.0/30", space=LOCAL)
    assert str(e.value) == (
        "Pool 10.99.0.0/30 is already used by another network in this address space; "
        "give each network its own --subnet"
    )
    assert status_of(e.value) == 400
    with pytest.raises(PoolOverlap):
        pool(svc, "10.99.0.0/30", "10.99.0.0/31", space=LOCAL)
    assert kv.snapshot() == before
    # Released, the subnet is free again.
    svc.release_pool(f"{LOCAL}/10.99.0.0/30")
    assert pool(svc, "10.99.0.0/30", space=LOCAL) == f"{LOCAL}/10.99.0.0/30"


def test_with_swarm_the_same_subnet_again_is_a_replay_in_both_spaces() -> None:
    svc = service()
    assert svc.capabilities() == (True, True)
    for space in (GLOBAL, LOCAL):
        first = pool(svc, "10.99.0.0/30", space=space)
        assert pool(svc, "10.99.0.0/30", space=space) == first
