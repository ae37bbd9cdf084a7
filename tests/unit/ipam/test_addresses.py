"""RequestAddress and ReleaseAddress through the service."""

from __future__ import annotations

import pytest

from ipam.errors import AddressInUse, AddressOutOfPool, Exhausted, UnknownPool
from plugin.errors import status_of
from tests.unit.ipam.fakes import CasKV
from tests.unit.ipam.helpers import (
    GATEWAY,
    GLOBAL,
    SERIAL,
    SWARM_GATEWAY,
    addr,
    address,
    pool,
    service,
)


def test_gateway_gets_the_first_usable_address_and_keeps_it() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    assert address(svc, pid, options=GATEWAY) == "10.1.2.1/24"
    # A pool has one gateway: a repeated request (a retry) gets the same one.
    assert address(svc, pid, options=SWARM_GATEWAY) == "10.1.2.1/24"
    assert address(svc, pid) == "10.1.2.2/24"


def test_explicit_gateway_is_honoured() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    assert address(svc, pid, "10.1.2.254", GATEWAY) == "10.1.2.254/24"
    assert address(svc, pid, options=GATEWAY) == "10.1.2.254/24"
    assert address(svc, pid) == "10.1.2.1/24"


def test_explicit_address_is_honoured_when_free_and_in_the_pool() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    assert address(svc, pid, "10.1.2.77") == "10.1.2.77/24"
    assert [address(svc, pid) for _ in range(2)] == ["10.1.2.1/24", "10.1.2.2/24"]


@pytest.mark.parametrize(
    ("want", "message"),
    [
        ("10.1.3.1", "Address 10.1.3.1 is not in pool 10.1.2.0/24"),
        ("fd00::1", "Address fd00::1 is not in pool 10.1.2.0/24"),
        ("10.1.2.0", "Address 10.1.2.0 is the network address of pool 10.1.2.0/24"),
        ("10.1.2.255", "Address 10.1.2.255 is the broadcast address of pool 10.1.2.0/24"),
    ],
)
def test_unusable_explicit_address_is_a_400_naming_it(want: str, message: str) -> None:
    kv = CasKV()
    svc = service(shared=kv)
    pid = pool(svc, "10.1.2.0/24")
    before = kv.snapshot()
    with pytest.raises(AddressOutOfPool) as e:
        address(svc, pid, want)
    assert str(e.value) == message
    assert status_of(e.value) == 400
    assert kv.snapshot() == before


def test_first_free_reuses_holes() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    got = [address(svc, pid) for _ in range(4)]
    assert got == ["10.1.2.1/24", "10.1.2.2/24", "10.1.2.3/24", "10.1.2.4/24"]
    svc.release_address(pid, addr("10.1.2.2"))
    assert address(svc, pid) == "10.1.2.2/24"


def test_serial_continues_after_the_last_and_wraps_around() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/29")  # usable .1 to .6
    assert address(svc, pid, options=SWARM_GATEWAY) == "10.1.2.1/29"
    assert [address(svc, pid, options=SERIAL) for _ in range(3)] == [
        "10.1.2.2/29",
        "10.1.2.3/29",
        "10.1.2.4/29",
    ]
    svc.release_address(pid, addr("10.1.2.2"))
    assert address(svc, pid, options=SERIAL) == "10.1.2.5/29"
    assert address(svc, pid, options=SERIAL) == "10.1.2.6/29"
    assert address(svc, pid, options=SERIAL) == "10.1.2.2/29"  # wrapped
    with pytest.raises(Exhausted):
        address(svc, pid, options=SERIAL)


def test_serial_option_in_the_request_overrides_the_pools() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24", options=SERIAL)
    address(svc, pid)
    address(svc, pid)
    svc.release_address(pid, addr("10.1.2.1"))
    assert address(svc, pid, options={"com.docker.network.ipam.serial": "false"}) == "10.1.2.1/24"


def test_explicit_addresses_do_not_move_the_serial_cursor() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    address(svc, pid, "10.1.2.100")
    assert address(svc, pid, options=SERIAL) == "10.1.2.1/24"


def test_network_and_broadcast_are_never_handed_out() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/29")
    got = [address(svc, pid, options=SERIAL) for _ in range(6)]
    assert got == [f"10.1.2.{i}/29" for i in range(1, 7)]
    with pytest.raises(Exhausted) as e:
        address(svc, pid)
    assert str(e.value) == (
        "no free address left in pool 10.1.2.0/29: remove a container from the network, "
        "or create the network with a larger --subnet"
    )
    assert status_of(e.value) == 507


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        ("10.1.2.0/30", ["10.1.2.1/30", "10.1.2.2/30"]),
        ("10.1.2.4/31", ["10.1.2.4/31", "10.1.2.5/31"]),  # RFC 3021: both usable
        ("10.1.2.9/32", ["10.1.2.9/32"]),
        ("fd00::/126", ["fd00::1/126", "fd00::2/126", "fd00::3/126"]),  # no broadcast in v6
        ("fd00::/127", ["fd00::/127", "fd00::1/127"]),
        ("fd00::5/128", ["fd00::5/128"]),
    ],
)
def test_tiny_pools(subnet: str, expected: list[str]) -> None:
    svc = service()
    pid = pool(svc, subnet)
    assert [address(svc, pid) for _ in expected] == expected
    with pytest.raises(Exhausted):
        address(svc, pid)
    # Explicit requests for each are replays now, and still succeed.
    for a in expected:
        assert address(svc, pid, a.split("/")[0]) == a


def test_v6_64_serial_allocation_stays_compact() -> None:
    kv = CasKV()
    svc = service(shared=kv)
    pid = pool(svc, "fd00:1::/64")
    for _ in range(200):
        address(svc, pid, options=SERIAL)
    record = kv.get("/swarmnet/v1/ipam/global/pools/fd00:1::_64")
    assert record is not None
    assert b'"used":[[1,200]]' in record


def test_sub_pool_gives_dynamic_addresses_from_its_range_only() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24", "10.1.2.248/30")
    # Like Docker, the range's own first address is usable (it is not the pool's network address).
    assert address(svc, pid, options=GATEWAY) == "10.1.2.248/24"
    assert [address(svc, pid) for _ in range(3)] == [
        "10.1.2.249/24",
        "10.1.2.250/24",
        "10.1.2.251/24",
    ]
    with pytest.raises(Exhausted) as e:
        address(svc, pid)
    assert str(e.value).startswith(
        "no free address left in the range 10.1.2.248/30 (--ip-range) of pool 10.1.2.0/24: "
    )
    # An explicit address outside the range but inside the pool is fine (gateways, aux addresses).
    assert address(svc, pid, "10.1.2.1") == "10.1.2.1/24"


def test_sub_pool_at_the_end_of_the_pool_excludes_the_broadcast() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24", "10.1.2.254/31")
    assert address(svc, pid) == "10.1.2.254/24"
    with pytest.raises(Exhausted):
        address(svc, pid)


def test_aux_addresses_are_reserved() -> None:
    # libnetwork reserves each --aux-address with RequestAddress(PoolID, ip, no options)
    # right after the gateway (network.go, ipamAllocateVersion). Swarm's allocator
    # never sends them; each node reserves them in its local space.
    svc = service()
    pid = pool(svc, "10.1.2.0/29", space="SwarmnetLocal")
    assert address(svc, pid, options=GATEWAY) == "10.1.2.1/29"
    for aux in ["10.1.2.2", "10.1.2.4"]:
        assert address(svc, pid, aux) == f"{aux}/29"
    assert [address(svc, pid) for _ in range(3)] == ["10.1.2.3/29", "10.1.2.5/29", "10.1.2.6/29"]


def test_aux_address_outside_the_range_is_reserved_too() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24", "10.1.2.0/30")
    assert address(svc, pid, "10.1.2.200") == "10.1.2.200/24"
    assert address(svc, pid, "10.1.2.200") == "10.1.2.200/24"  # a replay


def test_an_endpoint_asking_for_the_gateway_address_is_a_409() -> None:
    kv = CasKV()
    svc = service(shared=kv)
    pid = pool(svc, "10.1.2.0/24")
    address(svc, pid, options=GATEWAY)
    before = kv.snapshot()
    with pytest.raises(AddressInUse) as e:
        address(svc, pid, "10.1.2.1")
    assert str(e.value) == (
        "Address 10.1.2.1 is already in use: it is the gateway of pool 10.1.2.0/24; "
        "choose another --ip"
    )
    assert status_of(e.value) == 409
    assert kv.snapshot() == before


def test_an_allocated_explicit_address_is_granted_again() -> None:
    # dockerd retries, swarm leaders replay, and nodes replay the manager's choices:
    # none of them can be told apart from a second request, so all succeed.
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    assert address(svc, pid, "10.1.2.9") == "10.1.2.9/24"
    assert address(svc, pid, "10.1.2.9") == "10.1.2.9/24"
    assert address(svc, pid, "10.1.2.1", GATEWAY) == "10.1.2.1/24"
    assert address(svc, pid, "10.1.2.1", GATEWAY) == "10.1.2.1/24"


def test_release_address_is_idempotent() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    address(svc, pid, "10.1.2.9")
    svc.release_address(pid, addr("10.1.2.9"))
    svc.release_address(pid, addr("10.1.2.9"))  # logged, not an error
    svc.release_address(pid, addr("10.1.2.10"))  # never allocated
    svc.release_address(pid, addr("10.1.2.0"))  # the network address
    svc.release_address(f"{GLOBAL}/10.9.9.0/24", addr("10.9.9.9"))  # pool not allocated
    assert address(svc, pid) == "10.1.2.1/24"


def test_release_address_outside_the_pool_is_a_400() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    with pytest.raises(AddressOutOfPool, match=r"^Address 10.1.3.9 is not in pool 10.1.2.0/24$"):
        svc.release_address(pid, addr("10.1.3.9"))


def test_released_gateway_is_chosen_again() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    assert address(svc, pid, options=GATEWAY) == "10.1.2.1/24"
    assert address(svc, pid) == "10.1.2.2/24"
    svc.release_address(pid, addr("10.1.2.1"))
    assert address(svc, pid, "10.1.2.1") == "10.1.2.1/24"  # no longer the gateway
    assert address(svc, pid, options=GATEWAY) == "10.1.2.3/24"


@pytest.mark.parametrize(
    "pool_id",
    [
        f"{GLOBAL}/10.1.3.0/24",  # well formed, never allocated
        f"{GLOBAL}/10.1.2.0/24/10.1.2.0/25",  # a range nobody requested
        "LocalDefault/10.1.2.0/24",
        "nonsense",
    ],
)
def test_request_address_from_an_unknown_pool_is_a_400_naming_poolid(pool_id: str) -> None:
    kv = CasKV()
    svc = service(shared=kv)
    pool(svc, "10.1.2.0/24")
    before = kv.snapshot()
    with pytest.raises(UnknownPool, match=r"^PoolID ") as e:
        address(svc, pool_id)
    assert status_of(e.value) == 400
    assert kv.snapshot() == before


def test_request_address_after_release_pool_is_a_400() -> None:
    svc = service()
    pid = pool(svc, "10.1.2.0/24")
    svc.release_pool(pid)
    with pytest.raises(UnknownPool, match=r"is not allocated"):
        address(svc, pid)
