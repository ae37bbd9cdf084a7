"""RequestPool and ReleasePool through the service."""

from __future__ import annotations

import pytest

from ipam.errors import Exhausted, InvalidRequest, IpamError, PoolOverlap, UnknownPool
from ipam.messages import PoolRequest
from plugin.errors import status_of
from tests.unit.ipam.fakes import CasKV
from tests.unit.ipam.helpers import GLOBAL, LOCAL, address, net, pool, service


def test_default_address_spaces_and_capabilities() -> None:
    svc = service()
    assert svc.default_address_spaces() == (LOCAL, GLOBAL)
    assert svc.capabilities() == (True, True)


def test_networks_without_subnet_get_consecutive_subnets_in_order() -> None:
    svc = service("10.10.0.0/22")
    ids = [pool(svc) for _ in range(3)]
    assert ids == [f"{GLOBAL}/10.10.{i}.0/24" for i in range(3)]


def test_order_runs_across_pools_in_the_configured_order() -> None:
    svc = service("10.20.0.0/23,10.10.0.0/24")
    assert [pool(svc) for _ in range(3)] == [
        f"{GLOBAL}/10.20.0.0/24",
        f"{GLOBAL}/10.20.1.0/24",
        f"{GLOBAL}/10.10.0.0/24",
    ]


def test_released_subnets_are_reused_only_after_wrapping_around() -> None:
    svc = service("10.10.0.0/22")
    first, middle, third = pool(svc), pool(svc), pool(svc)
    svc.release_pool(middle)
    # Continue after the last one handed out, not from the hole.
    assert pool(svc) == f"{GLOBAL}/10.10.3.0/24"
    # Then wrap around and reuse the hole.
    assert pool(svc) == middle
    # The last one handed out is now the middle one, 10.10.1.0/24: after it comes
    # 10.10.2.0/24 once freed, then the search wraps to 10.10.0.0/24.
    svc.release_pool(first)
    svc.release_pool(third)
    assert pool(svc) == third
    assert pool(svc) == first


def test_mask_length_setting_is_used() -> None:
    svc = service("10.10.0.0/22", "26")
    assert [pool(svc) for _ in range(2)] == [f"{GLOBAL}/10.10.0.0/26", f"{GLOBAL}/10.10.0.64/26"]


def test_exhaustion_names_the_pools_and_allocates_nothing() -> None:
    kv = CasKV()
    svc = service("10.10.0.0/23,10.30.0.0/24", shared=kv)
    for _ in range(3):
        pool(svc)
    before = kv.snapshot()
    with pytest.raises(Exhausted) as e:
        pool(svc)
    assert "10.10.0.0/23, 10.30.0.0/24" in str(e.value)
    assert status_of(e.value) == 507
    assert kv.snapshot() == before


def test_subnets_overlapping_host_routes_are_skipped() -> None:
    svc = service("10.10.0.0/22", host=["10.10.0.0/24", "10.10.1.128/25", "0.0.0.0/0", "fd00::/8"])
    assert pool(svc) == f"{GLOBAL}/10.10.2.0/24"


def test_dynamic_subnets_skip_explicit_pools() -> None:
    svc = service("10.10.0.0/22")
    pool(svc, "10.10.0.0/23")
    pool(svc, "10.10.2.128/25")
    assert pool(svc) == f"{GLOBAL}/10.10.3.0/24"


def test_explicit_pool_is_honoured_with_its_options() -> None:
    svc = service()
    pid = pool(svc, "192.0.2.0/24", options={"com.docker.network.ipam.serial": "true", "x": "y"})
    assert pid == f"{GLOBAL}/192.0.2.0/24"
    # The kept serial option applies to address requests that do not say.
    assert address(svc, pid) == "192.0.2.1/24"
    assert address(svc, pid) == "192.0.2.2/24"
    svc.release_address(pid, net("192.0.2.1/32").network_address)
    assert address(svc, pid) == "192.0.2.3/24"  # serial: not the freed .1


def test_explicit_pool_does_not_move_the_dynamic_order() -> None:
    svc = service("10.10.0.0/22")
    pool(svc, "10.10.2.0/24")
    assert pool(svc) == f"{GLOBAL}/10.10.0.0/24"
    assert pool(svc) == f"{GLOBAL}/10.10.1.0/24"
    assert pool(svc) == f"{GLOBAL}/10.10.3.0/24"


def test_overlap_with_a_different_pool_names_the_other_pool() -> None:
    kv = CasKV()
    svc = service(shared=kv)
    pool(svc, "10.50.0.0/16")
    before = kv.snapshot()
    with pytest.raises(PoolOverlap) as e:
        pool(svc, "10.50.3.0/24")
    assert str(e.value) == (
        "Pool 10.50.3.0/24 overlaps with pool 10.50.0.0/16 of another network in this address "
        "space; give the network a --subnet that overlaps no other network's"
    )
    assert status_of(e.value) == 400
    assert kv.snapshot() == before


def test_the_same_pool_again_is_a_replay_not_an_overlap() -> None:
    svc = service()
    first = pool(svc, "10.50.0.0/24")
    gw = address(svc, first, "10.50.0.1", {"RequestAddressType": "com.docker.network.gateway"})
    assert pool(svc, "10.50.0.0/24") == first
    # The replay kept the pool's addresses.
    assert address(svc, first) == "10.50.0.2/24"
    assert gw == "10.50.0.1/24"


def test_address_spaces_are_independent() -> None:
    svc = service("10.10.0.0/22")
    assert pool(svc, space=GLOBAL) == f"{GLOBAL}/10.10.0.0/24"
    assert pool(svc, space=LOCAL) == f"{LOCAL}/10.10.0.0/24"
    assert pool(svc, "10.10.1.0/24", space=LOCAL) == f"{LOCAL}/10.10.1.0/24"
    assert pool(svc, space=GLOBAL) == f"{GLOBAL}/10.10.1.0/24"


def test_sub_pool_must_lie_inside_the_pool() -> None:
    svc = service()
    with pytest.raises(
        InvalidRequest, match=r"^SubPool: 10.60.1.0/24 is not inside Pool 10.60.0.0/24$"
    ):
        pool(svc, "10.60.0.0/24", "10.60.1.0/24")
    with pytest.raises(InvalidRequest, match=r"^SubPool: 10.60.0.0/23 is not inside Pool"):
        pool(svc, "10.60.0.0/24", "10.60.0.0/23")
    with pytest.raises(InvalidRequest, match=r"^SubPool: fd00::/64 is not inside Pool"):
        pool(svc, "10.60.0.0/24", "fd00::/64")
    with pytest.raises(InvalidRequest, match=r"^SubPool: 10.60.0.0/25 is given without a Pool$"):
        pool(svc, None, "10.60.0.0/25")


def test_sub_pools_of_one_pool_share_its_addresses() -> None:
    svc = service()
    low = pool(svc, "10.60.0.0/24", "10.60.0.0/25")
    high = pool(svc, "10.60.0.0/24", "10.60.0.128/25")
    assert low == f"{GLOBAL}/10.60.0.0/24/10.60.0.0/25"
    assert address(svc, low) == "10.60.0.1/24"
    assert address(svc, high) == "10.60.0.128/24"
    # An explicit address through one holder is seen through the other.
    assert address(svc, high, "10.60.0.2") == "10.60.0.2/24"
    assert address(svc, low) == "10.60.0.3/24"
    # Releasing one holder keeps the pool for the other.
    svc.release_pool(low)
    assert address(svc, high) == "10.60.0.129/24"
    with pytest.raises(UnknownPool):
        address(svc, low)
    # And it still blocks overlapping pools until the last holder goes.
    with pytest.raises(PoolOverlap):
        pool(svc, "10.60.0.0/25")
    svc.release_pool(high)
    assert pool(svc, "10.60.0.0/25") == f"{GLOBAL}/10.60.0.0/25"


def test_v6_pools_work_when_the_subnet_is_given() -> None:
    svc = service()
    pid = pool(svc, "fd00:1:2::/64", v6=True)
    assert pid == f"{GLOBAL}/fd00:1:2::/64"
    assert address(svc, pid, options={"RequestAddressType": "com.docker.network.gateway"}) == (
        "fd00:1:2::1/64"
    )
    assert address(svc, pid) == "fd00:1:2::2/64"
    assert address(svc, pid, "fd00:1:2::ffff:ffff:ffff:ffff") == "fd00:1:2:0:ffff:ffff:ffff:ffff/64"


def test_swarm_sends_v6_false_even_for_ipv6_subnets() -> None:
    # swarmkit's allocator always passes V6=false; the subnet's own version wins.
    svc = service()
    assert pool(svc, "fd00:9::/64", v6=False) == f"{GLOBAL}/fd00:9::/64"


def test_v6_without_a_subnet_is_a_clear_400() -> None:
    with pytest.raises(InvalidRequest, match=r"^V6: there is no default IPv6 pool") as e:
        pool(service(), v6=True)
    assert status_of(e.value) == 400


def test_v4_and_v6_pools_do_not_overlap_each_other() -> None:
    svc = service()
    pool(svc, "::/0")
    assert pool(svc, "10.70.0.0/24") == f"{GLOBAL}/10.70.0.0/24"


def test_unknown_address_space_is_a_400_naming_it() -> None:
    svc = service()
    for space in ["", "LocalDefault", "swarmnetglobal"]:
        with pytest.raises(InvalidRequest, match=r"^AddressSpace: ") as e:
            svc.request_pool(PoolRequest(address_space=space, pool=None))
        assert status_of(e.value) == 400


def test_release_pool_is_idempotent_and_frees_the_subnet() -> None:
    svc = service("10.10.0.0/23")
    a = pool(svc)
    b = pool(svc)
    svc.release_pool(a)
    svc.release_pool(a)  # again: logged, not an error
    svc.release_pool(f"{GLOBAL}/10.99.0.0/24")  # never allocated: logged, not an error
    svc.release_pool(f"{GLOBAL}/10.10.1.0/24/10.10.1.0/25")  # a range nobody holds
    assert pool(svc) == a
    with pytest.raises(Exhausted):
        pool(svc)
    assert b


def test_release_of_a_poolid_we_never_issued_is_a_400() -> None:
    with pytest.raises(UnknownPool, match=r"^PoolID 'LocalDefault/10.1.0.0/16' was not issued"):
        service().release_pool("LocalDefault/10.1.0.0/16")


def test_a_pool_released_and_allocated_again_starts_empty() -> None:
    svc = service("10.10.0.0/24")
    pid = pool(svc)
    address(svc, pid, options={"RequestAddressType": "com.docker.network.gateway"})
    address(svc, pid)
    svc.release_pool(pid)  # with addresses still allocated: all go with it
    assert pool(svc) == pid
    assert address(svc, pid) == "10.10.0.1/24"


def test_every_error_is_an_ipam_error_with_a_status() -> None:
    for cls in [Exhausted, InvalidRequest, PoolOverlap, UnknownPool]:
        assert issubclass(cls, IpamError)
        assert status_of(cls('')) in (400, 409, 507)


def test_two_managers_on_one_store_interleave_in_order() -> None:
    shared = CasKV()
    a = service("10.10.0.0/21", shared=shared)
    b = service("10.10.0.0/21", shared=shared)
    got = [pool(svc) for svc in (a, b, a, a, b, b, a)]
    assert got == [f"{GLOBAL}/10.10.{i}.0/24" for i in range(7)]
    a.release_pool(got[1])
    b.release_pool(got[0])
    assert pool(b) == f"{GLOBAL}/10.10.7.0/24"
    assert pool(a) == got[0]
    assert pool(b) == got[1]
