"""The store port. Adapters (SQLite embedded, etcd) live in ``plugin.store``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class KV(Protocol):
    """A key-value store with atomic read-modify-write.

    Contract (checked for every adapter by ``tests/contract/kv_contract.py``):

    - ``get`` returns the value, or None when the key is absent.
    - ``list(prefix)`` returns every key that starts with ``prefix``, literally
      (no wildcard characters), with its value.
    - ``put`` creates or overwrites; ``delete`` of a missing key is fine.
    - ``update(key, fn)`` calls ``fn`` with the current value (None if absent)
      and stores what it returns (None deletes the key), atomically: no other
      write to ``key`` lands between the read and the write. Adapters do this
      with compare-and-swap and retry, so ``fn`` may run several times and must
      be pure. An adapter may first run ``fn`` on a remembered value that is
      out of date; it keeps only an outcome computed on the current value,
      whether that outcome writes, leaves the value as it is, or raises. If
      ``fn`` raises, nothing is written and the exception propagates. Returns
      what was written (None if the key is now absent).
    """

    def get(self, key: str) -> bytes | None: ...

    def list(self, prefix: str) -> dict[str, bytes]: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None: ...
