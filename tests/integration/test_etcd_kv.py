"""The KV contract against the etcd adapter, on a real etcd server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ipam.store_port import KV
from plugin.errors import status_of
from plugin.store.etcd import EtcdKV, StoreUnavailable
from testbed.etcdserver import EtcdServer, free_port
from tests.contract.kv_contract import KVContract
from tests.support.etcd_requests import Requests, counting_kv


class TestEtcdKV(KVContract):
    @pytest.fixture
    def kv(self, etcd: EtcdServer) -> Iterator[KV]:
        yield EtcdKV([etcd.url])

    @pytest.fixture
    def peer(self, etcd: EtcdServer) -> Iterator[KV]:
        yield EtcdKV([etcd.url])


def test_fails_over_to_the_endpoint_that_answers(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    kv = EtcdKV([dead, etcd.url], timeout=2)
    kv.put("/failover/a", b"1")
    assert kv.get("/failover/a") == b"1"


def test_unreachable_etcd_is_a_503_naming_the_endpoints() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    kv = EtcdKV([dead], timeout=1)
    with pytest.raises(StoreUnavailable) as err:
        kv.update("/x", lambda v: b"1")
    assert status_of(err.value) == 503 and dead in str(err.value)


# -- the last-seen copy behind update (plugin/store/etcd_cache.py) ------------------------


def test_update_costs_one_txn_once_the_key_was_seen(etcd: EtcdServer) -> None:
    log = Requests()
    kv = counting_kv(etcd.url, log)
    kv.update("/seen/k", lambda cur: b"1")  # the first: read, then write
    assert log.take() == ["/kv/range", "/kv/txn"]
    for n in (b"2", b"3", b"4", b"5"):
        assert kv.update("/seen/k", lambda cur: str(int(cur or b"0") + 1).encode()) == n
        assert log.take() == ["/kv/txn"]
    # A no-op on the remembered copy is confirmed by a txn that writes nothing.
    assert kv.update("/seen/k", lambda cur: cur) == b"5"
    assert log.take() == ["/kv/txn"]
    assert kv.get("/seen/k") == b"5"


def test_a_stale_copy_costs_a_failed_txn_that_brings_the_current_value(
    etcd: EtcdServer,
) -> None:
    log = Requests()
    kv, other = counting_kv(etcd.url, log), EtcdKV([etcd.url])
    kv.update("/seen/k", lambda cur: b"a")
    other.update("/seen/k", lambda cur: (cur or b"") + b"b")
    log.take()
    assert kv.update("/seen/k", lambda cur: (cur or b"") + b"c") == b"abc"
    assert log.take() == ["/kv/txn", "/kv/txn"]
    other.delete("/seen/k")
    assert kv.update("/seen/k", lambda cur: (cur or b"") + b"d") == b"d"
    assert log.take() == ["/kv/txn", "/kv/txn"]
    # Deleting through update, and creating again, keep the copy exact.
    assert kv.update("/seen/k", lambda cur: None) is None
    assert kv.update("/seen/k", lambda cur: b"e" if cur is None else cur) == b"e"
    assert log.take() == ["/kv/txn", "/kv/txn"]
    assert other.get("/seen/k") == b"e"


def test_the_copy_is_bounded_and_an_evicted_key_is_read_again(etcd: EtcdServer) -> None:
    log = Requests()
    kv = counting_kv(etcd.url, log, cache_size=2)
    for key in ("/seen/a", "/seen/b", "/seen/c"):
        kv.update(key, lambda cur: b"1")
    log.take()
    kv.update("/seen/c", lambda cur: b"2")
    assert log.take() == ["/kv/txn"]
    kv.update("/seen/a", lambda cur: b"2")  # evicted by c
    assert log.take() == ["/kv/range", "/kv/txn"]
    assert [kv.get(k) for k in ("/seen/a", "/seen/b", "/seen/c")] == [b"2", b"1", b"2"]


def test_plain_puts_do_not_evict_what_update_remembers(etcd: EtcdServer) -> None:
    log = Requests()
    kv = counting_kv(etcd.url, log, cache_size=2)
    kv.update("/seen/pool", lambda cur: b"1")
    for i in range(5):
        kv.put(f"/seen/peer/{i}", b"p")
    log.take()
    kv.update("/seen/pool", lambda cur: b"2")
    assert log.take() == ["/kv/txn"]


def test_no_decision_is_taken_on_the_copy_while_etcd_is_down(etcd: EtcdServer) -> None:
    kv = EtcdKV([etcd.url], timeout=1)
    kv.update("/seen/k", lambda cur: b"held")
    etcd.stop()

    def refuse(current: bytes | None) -> bytes | None:
        raise ValueError("not free")

    with pytest.raises(StoreUnavailable):
        kv.update("/seen/k", lambda cur: cur)
    with pytest.raises(StoreUnavailable):
        kv.update("/seen/k", refuse)
    etcd.start()
    assert kv.update("/seen/k", lambda cur: cur) == b"held"
