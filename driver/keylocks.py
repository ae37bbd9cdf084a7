"""One lock per key (a network ID), held only while someone uses it.

A plain ``dict.setdefault(key, Lock())`` grows with every network ever seen.
Here each entry counts its users and goes when the last one leaves, so the
table holds only the networks being worked on right now. Two threads asking
for the same key always get the same lock, because the count and the entry
change together under one guard.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._entries.get(key) or (threading.Lock(), 0)
            self._entries[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._entries[key]
                if users <= 1:
                    del self._entries[key]
                else:
                    self._entries[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._entries)
