from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.etcdserver import EtcdServer, etcd_server


@pytest.fixture(scope="session")
def etcd_session() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


@pytest.fixture
def etcd(etcd_session: EtcdServer) -> Iterator[EtcdServer]:
    """A running etcd, emptied before each test."""
    from plugin.store.etcd import EtcdKV

    if etcd_session.process.poll() is not None:
        etcd_session.start()
    kv = EtcdKV([etcd_session.url])
    for key in kv.list("/"):
        kv.delete(key)
    yield etcd_session
    if etcd_session.process.poll() is not None:
        etcd_session.start()
