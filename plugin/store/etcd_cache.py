"""The last value and mod revision the etcd adapter saw per key: a bounded LRU.

``EtcdKV.update`` compares-and-swaps against this copy instead of reading the
key first, which halves the round trips of a read-modify-write when nobody
else wrote in between. The copy is only ever a guess: every write it leads to
is guarded by an etcd compare on the mod revision, and a decision made on it
that writes nothing is confirmed the same way before it is trusted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Seen:
    """``key``'s value (None: absent) and mod revision (0: absent), as of store revision ``at``."""

    value: bytes | None
    mod_revision: int
    at: int


class SeenCache:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("the etcd cache needs room for at least one key")
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Seen] = OrderedDict()

    def get(self, key: str) -> Seen | None:
        with self._lock:
            seen = self._items.get(key)
            if seen is not None:
                self._items.move_to_end(key)
            return seen

    def remember(self, key: str, seen: Seen, *, add: bool = True) -> None:
        """Keep ``seen`` unless a newer observation is already there.

        Threads of one process finish their requests in any order; comparing
        the store revision each answer was given at keeps the newest. ``add``
        False only refreshes a key that is already cached, so plain puts (peer
        records, by the hundred) never evict the keys ``update`` works on.
        """
        with self._lock:
            old = self._items.get(key)
            if old is None:
                if not add:
                    return
            elif old.at > seen.at:
                return
            self._items[key] = seen
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
