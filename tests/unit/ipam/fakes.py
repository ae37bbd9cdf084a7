"""An in-memory KV with optimistic compare-and-swap, like the etcd adapter.

``update`` reads the value and its version, runs ``fn`` outside the lock, and
writes only if the version has not moved meanwhile; otherwise it runs ``fn``
again. ``spurious_conflicts`` makes every update retry that many extra times,
so a test can prove the service's update functions are pure. The KV contract
suite (``tests/contract/kv_contract.py``) keeps it honest.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable


class CasKV:
    def __init__(self, spurious_conflicts: int = 0) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[int, bytes]] = {}
        self._clock = 0
        self.spurious_conflicts = spurious_conflicts
        self.fn_calls = 0
        self.writes = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
        return None if item is None else item[1]

    def list(self, prefix: str) -> dict[str, bytes]:
        with self._lock:
            return {k: v for k, (_, v) in sorted(self._data.items()) if k.startswith(prefix)}

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._write(key, bytes(value))

    def delete(self, key: str) -> None:
        with self._lock:
            self._write(key, None)

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        forced = self.spurious_conflicts
        while True:
            with self._lock:
                item = self._data.get(key)
            version = None if item is None else item[0]
            self.fn_calls += 1
            new = fn(None if item is None else item[1])
            with self._lock:
                current = self._data.get(key)
                if (None if current is None else current[0]) != version or forced > 0:
                    forced -= 1
                    continue
                self._write(key, None if new is None else bytes(new))
                return new

    def snapshot(self) -> dict[str, bytes]:
        with self._lock:
            return {k: v for k, (_, v) in self._data.items()}

    def clone(self) -> CasKV:
        """An independent store with the same content (a 'restart' on a copy)."""
        other = CasKV(self.spurious_conflicts)
        with self._lock:
            other._data = copy.deepcopy(self._data)
            other._clock = self._clock
        return other

    def _write(self, key: str, value: bytes | None) -> None:
        self._clock += 1
        self.writes += 1
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = (self._clock, value)
