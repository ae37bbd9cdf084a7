"""The KV contract against the store adapters that exist in ``plugin.store``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ipam.store_port import KV
from plugin.store.memory import MemoryKV
from plugin.store.sqlite import SqliteKV
from tests.contract.kv_contract import KVContract


class TestPluginMemoryKV(KVContract):
    @pytest.fixture
    def kv(self) -> Iterator[KV]:
        yield MemoryKV()


class TestSqliteKV(KVContract):
    @pytest.fixture
    def kv(self, tmp_path: Path) -> Iterator[KV]:
        store = SqliteKV(tmp_path / "kv.db")
        yield store
        store.close()

    @pytest.fixture
    def peer(self, kv: SqliteKV) -> Iterator[KV]:
        store = SqliteKV(kv.path)
        yield store
        store.close()
