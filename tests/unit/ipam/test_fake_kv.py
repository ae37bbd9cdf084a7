"""The in-memory CAS fake obeys the same KV contract as the real adapters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ipam.store_port import KV
from tests.contract.kv_contract import KVContract
from tests.unit.ipam.fakes import CasKV


class TestCasKV(KVContract):
    @pytest.fixture
    def kv(self) -> Iterator[KV]:
        yield CasKV()


class TestCasKVWithSpuriousConflicts(KVContract):
    @pytest.fixture
    def kv(self) -> Iterator[KV]:
        yield CasKV(spurious_conflicts=2)


def test_spurious_conflicts_rerun_fn() -> None:
    kv = CasKV(spurious_conflicts=2)
    calls: list[bytes | None] = []

    def fn(current: bytes | None) -> bytes:
        calls.append(current)
        return b"v"

    kv.update("k", fn)
    assert len(calls) == 3
