"""A failed call allocates nothing and loses nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ipam.errors import CorruptRecord, IpamError
from ipam.messages import AddressRequest, PoolRequest
from ipam.service import IpamService
from plugin.errors import status_of
from tests.unit.ipam.fakes import CasKV
from tests.unit.ipam.helpers import GATEWAY, GLOBAL, LOCAL, addr, address, net, pool, service

RANGE = f"{GLOBAL}/10.10.1.0/24/10.10.1.0/30"


def populated() -> tuple[CasKV, IpamService, str]:
    kv = CasKV()
    svc = service("10.10.0.0/23", shared=kv)
    pid = pool(svc)
    pool(svc, "10.10.1.0/24", "10.10.1.0/30")
    address(svc, pid, options=GATEWAY)
    address(svc, pid)
    pool(svc, "fd00::/64", space=LOCAL)
    return kv, svc, pid


FAILING: list[tuple[str, Callable[[IpamService, str], object]]] = [
    ("pool exhausted", lambda s, p: s.request_pool(PoolRequest(GLOBAL, None))),
    ("overlap", lambda s, p: s.request_pool(PoolRequest(GLOBAL, net("10.10.0.0/16")))),
    (
        "sub-pool outside",
        lambda s, p: s.request_pool(PoolRequest(GLOBAL, net("10.20.0.0/24"), net("10.21.0.0/25"))),
    ),
    (
        "sub-pool without pool",
        lambda s, p: s.request_pool(PoolRequest(GLOBAL, None, net("10.21.0.0/25"))),
    ),
    ("v6 without subnet", lambda s, p: s.request_pool(PoolRequest(LOCAL, None, v6=True))),
    ("unknown space", lambda s, p: s.request_pool(PoolRequest("GlobalDefault", None))),
    ("address outside", lambda s, p: s.request_address(AddressRequest(p, addr("10.99.0.1")))),
    ("broadcast", lambda s, p: s.request_address(AddressRequest(p, addr("10.10.0.255")))),
    ("gateway taken", lambda s, p: s.request_address(AddressRequest(p, addr("10.10.0.1")))),
    ("unknown pool", lambda s, p: s.request_address(AddressRequest(f"{GLOBAL}/10.30.0.0/24"))),
    ("bad pool id", lambda s, p: s.request_address(AddressRequest("10.10.0.0/24"))),
    ("range exhausted", lambda s, p: s.request_address(AddressRequest(RANGE))),
    ("release outside", lambda s, p: s.release_address(p, addr("10.99.0.1"))),
    ("release bad id", lambda s, p: s.release_pool("SwarmnetGlobal/10.10.0.0")),
]


@pytest.mark.parametrize(("name", "call"), FAILING, ids=[n for n, _ in FAILING])
def test_failed_call_changes_nothing(name: str, call: Callable[[IpamService, str], object]) -> None:
    kv, svc, pid = populated()
    if name == "range exhausted":
        for _ in range(3):  # .1 to .3: the range's .0 is the pool's network address
            address(svc, RANGE)
    before = kv.snapshot()
    with pytest.raises(IpamError) as e:
        call(svc, pid)
    assert status_of(e.value) in (400, 409, 507)
    assert kv.snapshot() == before


class FailingPoolWrites(CasKV):
    """Fails every update of a pool record: the store goes away mid-request."""

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        if "/pools/" in key:
            raise OSError("store unavailable")
        return super().update(key, fn)


def test_store_failure_after_reserving_a_subnet_undoes_the_reservation() -> None:
    kv = FailingPoolWrites()
    svc = service("10.10.0.0/23", shared=kv)
    before = kv.snapshot()
    with pytest.raises(OSError):
        pool(svc)
    with pytest.raises(OSError):
        pool(svc, "10.50.0.0/24")
    index = kv.get("/swarmnet/v1/ipam/global/index")
    assert index is not None and b'"pools":{}' in index
    assert {k for k in kv.snapshot() if k not in before} <= {"/swarmnet/v1/ipam/global/index"}


def test_a_corrupt_record_is_a_500_naming_the_key() -> None:
    kv, svc, pid = populated()
    key = "/swarmnet/v1/ipam/global/pools/10.10.0.0_24"
    kv.put(key, b"{not json")
    with pytest.raises(CorruptRecord) as e:
        address(svc, pid)
    assert status_of(e.value) == 500
    assert key in str(e.value)
    kv.put(key, b'{"v":1,"pool":"10.10.0.0/24"}')
    with pytest.raises(CorruptRecord, match="is malformed"):
        address(svc, pid)
    kv.put("/swarmnet/v1/ipam/global/index", b'{"v":99}')
    with pytest.raises(CorruptRecord, match="unknown format"):
        pool(svc)
