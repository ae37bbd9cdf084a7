"""An in-memory KV for unit tests. The KV contract suite keeps it honest."""

from __future__ import annotations

import threading
from collections.abc import Callable


class MemoryKV:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self.data.get(key)

    def list(self, prefix: str) -> dict[str, bytes]:
        with self._lock:
            return {k: v for k, v in sorted(self.data.items()) if k.startswith(prefix)}

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self.data[key] = bytes(value)

    def delete(self, key: str) -> None:
        with self._lock:
            self.data.pop(key, None)

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        with self._lock:
            new = fn(self.data.get(key))
            if new is None:
                self.data.pop(key, None)
            else:
                self.data[key] = bytes(new)
            return new
