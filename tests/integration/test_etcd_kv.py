"""The KV contract against the etcd adapter, on a real etcd server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ipam.ports import KV
from plugin.store.etcd import EtcdKV, StoreUnavailable
from tests.contract.kv_contract import KVContract
from tests.support.etcd import EtcdServer, free_port


class TestEtcdKV(KVContract):
    @pytest.fixture
    def kv(self, etcd: EtcdServer) -> Iterator[KV]:
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
    assert err.value.http_status == 503 and dead in str(err.value)
