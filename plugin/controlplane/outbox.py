"""What this node publishes, and what is still to be written to etcd.

In memory only, behind one lock: Join and Leave queue here and return at once; the keeper
thread (``keeper.py``) takes what is queued and writes it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from driver.peers import PeerRecord

Key = tuple[str, str]  # (network ID, endpoint ID)


class Outbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: dict[Key, PeerRecord] = {}
        self._pending_deletes: set[Key] = set()
        # Written by the keeper in the order of the calls' last word per key:
        # a record to put, or None to delete.
        self._queued: dict[Key, PeerRecord | None] = {}
        self._sending = False
        self._dirty = True  # something we own may be missing from etcd
        self._info: dict[str, object] = {}  # announced facts for the node record

    # -- the callers' side -------------------------------------------------

    def publish(self, record: PeerRecord) -> None:
        key = (record.network_id, record.endpoint_id)
        with self._lock:
            self._published[key] = record
            self._pending_deletes.discard(key)
            self._queued[key] = record

    def withdraw(self, key: Key) -> None:
        with self._lock:
            self._published.pop(key, None)
            self._queued[key] = None

    def announce(self, info: Mapping[str, object]) -> None:
        with self._lock:
            self._info = dict(info)
            self._dirty = True

    def idle(self) -> bool:
        """Everything queued is written, and nothing we own may be missing."""
        with self._lock:
            return not self._queued and not self._sending and not self._dirty

    # -- the keeper's side -------------------------------------------------

    def dirty(self) -> bool:
        with self._lock:
            return self._dirty

    def set_dirty(self, dirty: bool = True) -> None:
        with self._lock:
            self._dirty = dirty

    def take_all(self) -> tuple[list[PeerRecord], set[Key], dict[str, object]]:
        """For a full republish: every record we own, every withdrawal, the node's facts.

        Everything queued is a record we own or a withdrawal: the republish covers it.
        """
        with self._lock:
            self._remember_withdrawals(self._queued)
            self._queued.clear()
            return list(self._published.values()), set(self._pending_deletes), dict(self._info)

    def deleted(self, keys: set[Key]) -> None:
        with self._lock:
            self._pending_deletes -= keys

    def take_queued(self) -> dict[Key, PeerRecord | None]:
        """What was queued since the last take; ``sent`` must follow."""
        with self._lock:
            batch, self._queued = self._queued, {}
            self._sending = bool(batch)
        return batch

    def sent(self, batch: Mapping[Key, PeerRecord | None], ok: bool) -> None:
        with self._lock:
            if not ok:
                # The full republish after reconnecting writes every record we own and
                # deletes every withdrawn one; remember the withdrawals for it.
                self._remember_withdrawals(batch)
                self._dirty = True
            self._sending = False

    def to_hand_over(self) -> tuple[list[PeerRecord], set[Key], dict[str, object]]:
        """Like ``take_all``, without taking: the records, withdrawals and facts of now."""
        with self._lock:
            records = list(self._published.values())
            deletes = {k for k, v in self._queued.items() if v is None} | self._pending_deletes
            return records, deletes - set(self._published), dict(self._info)

    def _remember_withdrawals(self, batch: Mapping[Key, PeerRecord | None]) -> None:
        self._pending_deletes |= {k for k, v in batch.items() if v is None}
        self._pending_deletes -= set(self._published)
