"""How many etcd requests IPAM makes per call, counted on a real etcd.

Container attach latency is dominated by these round trips: in the steady
state (the pool record already seen by this process) RequestAddress and
ReleaseAddress must each cost exactly one request, a compare-and-swap txn
against the copy this process saw last.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from ipam.config import IpamConfig
from ipam.service import IpamService
from plugin.store.etcd import EtcdKV
from plugin.store.memory import MemoryKV
from testbed.etcdserver import EtcdServer
from tests.support.etcd_requests import Requests, counting_kv
from tests.unit.ipam.helpers import GATEWAY, LAYOUT, address, pool

POOL = "10.10.0.0/24"


def ipam(kv: EtcdKV) -> IpamService:
    return IpamService(
        local=MemoryKV(),
        shared=kv,
        layout=LAYOUT,
        config=IpamConfig.from_strings("10.10.0.0/16", "24"),
        host_networks=lambda: [],
    )


@pytest.fixture
def log() -> Requests:
    return Requests()


@pytest.fixture
def kv(etcd: EtcdServer, log: Requests) -> Iterator[EtcdKV]:
    yield counting_kv(etcd.url, log)


def test_request_and_release_address_take_one_round_trip_each(kv: EtcdKV, log: Requests) -> None:
    svc = ipam(kv)
    pid = pool(svc, POOL)
    address(svc, pid, options=GATEWAY)
    log.take()
    for i in range(2, 12):
        assert address(svc, pid) == f"10.10.0.{i}/24"
        assert log.take() == ["/kv/txn"], "RequestAddress"
    for i in range(2, 12):
        svc.release_address(pid, ip_address(f"10.10.0.{i}"))
        assert log.take() == ["/kv/txn"], "ReleaseAddress"
    # Explicit addresses and replays: still one each.
    assert address(svc, pid, "10.10.0.77") == "10.10.0.77/24"
    assert log.take() == ["/kv/txn"]
    assert address(svc, pid, "10.10.0.77") == "10.10.0.77/24"  # Docker's retry
    assert log.take() == ["/kv/txn"]
    svc.release_address(pid, ip_address("10.10.0.77"))
    svc.release_address(pid, ip_address("10.10.0.77"))  # not allocated any more
    assert log.take() == ["/kv/txn", "/kv/txn"]


def test_the_first_call_in_a_new_process_reads_once(etcd: EtcdServer, log: Requests) -> None:
    pid = pool(ipam(EtcdKV([etcd.url])), POOL)
    svc = ipam(counting_kv(etcd.url, log))
    assert address(svc, pid) == "10.10.0.1/24"
    assert log.take() == ["/kv/range", "/kv/txn"]
    assert address(svc, pid) == "10.10.0.2/24"
    assert log.take() == ["/kv/txn"]


def test_two_managers_on_one_pool_stay_correct_and_cheap(etcd: EtcdServer, log: Requests) -> None:
    a = ipam(counting_kv(etcd.url, log))
    b = ipam(EtcdKV([etcd.url]))
    pid = pool(a, POOL)
    address(b, pid)  # b has now seen the pool too
    log.take()
    granted = set()
    for _ in range(10):
        granted.add(address(a, pid))
        # b wrote since a's last call: a's copy is stale, the failed txn brings the
        # current one back, and the retry commits. Never a separate read.
        assert log.take() == ["/kv/txn", "/kv/txn"]
        granted.add(address(b, pid))
    assert len(granted) == 20
    assert granted == {f"10.10.0.{i}/24" for i in range(2, 22)}
    # Each frees what the other allocated, and gets back what the other freed.
    a.release_address(pid, ip_address("10.10.0.3"))  # b's
    b.release_address(pid, ip_address("10.10.0.2"))  # a's
    assert address(b, pid) == "10.10.0.2/24"
    assert address(a, pid) == "10.10.0.3/24"
    assert address(a, pid) == "10.10.0.22/24"
