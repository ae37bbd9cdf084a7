"""The watcher thread: every node's endpoints, followed from etcd, handed to the driver.

It lists the peers prefix, then follows a watch stream from the listed revision. It hands
the driver level-triggered snapshots (every endpoint of a watched network) after a listing,
on ``watch`` and on the periodic resync; in between, the changes of each watch response,
one delivery per network (``on_changes``), so an event costs every node work in proportion
to the change rather than to the network's size. Any error leads to a re-list, so an etcd
outage or a lost watch ends with the store and the kernel converged again.

Deliveries are serialised (``_deliveries``): a snapshot copied by another thread (the
keeper's resync, a CreateNetwork's ``watch``) is handed over before or after a response's
changes, never in the middle, so a stale snapshot cannot undo a newer change.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Mapping
from typing import Any

from core.layout import StoreLayout
from driver import names
from driver.events import NO_EVENTS, ControlPlaneEvents
from driver.peers import OnChanges, OnSnapshot, PeerRecord
from plugin.controlplane import gateway
from plugin.store.etcd import EtcdKV

log = logging.getLogger(__name__)


class PeerWatcher:
    def __init__(
        self,
        kv: EtcdKV,
        keys: StoreLayout,
        stop: threading.Event,
        idle_timeout: float | None = None,
    ) -> None:
        """``idle_timeout``: list again after that long without a line from the stream (for
        relays, which send progress lines; see ``plugin.relay.feed.HEARTBEAT``)."""
        self.kv = kv
        self.idle_timeout = idle_timeout
        self.keys = keys
        self._stop = stop
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, PeerRecord]] = {}
        # No snapshot before the first complete list: an empty state that only means
        # "not read yet" would wipe the entries a previous run programmed (and, with
        # etcd down at start, keep them wiped until it is back).
        self._listed = False
        self._watched: set[str] = set()
        self._stream: gateway.WatchStream | None = None
        self._deliveries = threading.RLock()
        self.on_snapshot: OnSnapshot | None = None
        self.on_changes: OnChanges | None = None
        self.events: ControlPlaneEvents = NO_EVENTS  # metrics hook (driver/events.py)

    def watch(self, network_id: str) -> None:
        with self._lock:
            self._watched.add(network_id)
        self._deliver(network_id)

    def unwatch(self, network_id: str) -> None:
        with self._lock:
            self._watched.discard(network_id)

    def resync(self) -> None:
        """Hand every watched network its snapshot again.

        Programming a snapshot can fail (a transient kernel error); without a
        new event in that network nothing would retry it. A periodic full
        diff is cheap (it changes nothing when kernel and store agree) and
        bounds how long any drift can last.
        """
        with self._lock:
            watched = sorted(self._watched)
        for nid in watched:
            self._deliver(nid, recheck=True)

    def close_stream(self) -> None:
        """Cut the watch stream from another thread (the stop)."""
        stream = self._stream
        if stream is not None:
            stream.shut()

    def run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                revision = self._list()
                backoff = 0.2
                self._follow(revision)
            except Exception as e:
                if not self._stop.is_set():
                    log.info("control plane: watch interrupted (%s); listing again", e)
                    self.events.watch_restarted()  # metrics hook
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    def _deliver(self, network_id: str, recheck: bool = False) -> None:
        with self._deliveries:
            with self._lock:
                if (
                    not self._listed
                    or network_id not in self._watched
                    or self.on_snapshot is None
                ):
                    return
                snapshot: Mapping[str, PeerRecord] = dict(self._state.get(network_id, {}))
                callback = self.on_snapshot
            try:
                callback(network_id, snapshot, recheck=recheck)
            except Exception:
                log.exception("network %s: programming peers failed", names.short(network_id))

    def _deliver_changes(self, network_id: str, changes: Mapping[str, PeerRecord | None]) -> None:
        """Under ``_deliveries``: the changes alone, or a snapshot when the driver has
        nothing to apply them to (or applying them failed)."""
        with self._lock:
            if not self._listed or network_id not in self._watched:
                return
            callback = self.on_changes
        if callback is not None:
            try:
                if callback(network_id, changes):
                    return
            except Exception:
                log.exception("network %s: programming peers failed", names.short(network_id))
        self._deliver(network_id)

    def _list(self) -> int:
        result = gateway.list_prefix(self.kv, self.keys.peers)
        state: dict[str, dict[str, PeerRecord]] = {}
        for kv in result.get("kvs", []):
            rec = self._decode(kv)
            if rec is not None:
                state.setdefault(rec.network_id, {})[rec.endpoint_id] = rec
        with self._lock:
            old = set(self._state)
            self._state = state
            self._listed = True
            watched = set(self._watched)
        for nid in (old | set(state)) & watched:
            # Events may have been missed while listing again: compare with the kernel.
            self._deliver(nid, recheck=True)
        return int(result["header"]["revision"])

    @staticmethod
    def _decode(kv: Mapping[str, Any]) -> PeerRecord | None:
        try:
            return PeerRecord.from_json(base64.b64decode(kv.get("value", "")))
        except (ValueError, KeyError) as e:
            log.warning("ignoring malformed peer record %r: %s", kv.get("key"), e)
            return None

    def _apply(self, events: list[Mapping[str, Any]]) -> None:
        """One watch response: every event into the state, then one delivery per network."""
        with self._deliveries:
            changes: dict[str, dict[str, PeerRecord | None]] = {}
            for event in events:
                kv = event["kv"]
                key = base64.b64decode(kv["key"]).decode()
                parts = key[len(self.keys.peers) :].split("/")
                if len(parts) != 2:
                    continue
                nid, eid = parts
                rec = None
                if event.get("type") == "DELETE":
                    with self._lock:
                        self._state.get(nid, {}).pop(eid, None)
                else:
                    rec = self._decode(kv)
                    if rec is None:
                        continue
                    with self._lock:
                        self._state.setdefault(nid, {})[eid] = rec
                if nid in self._watched:
                    self.events.record_changed(nid, eid, rec)  # metrics hook
                    changes.setdefault(nid, {})[eid] = rec
            for nid, changed in changes.items():
                self._deliver_changes(nid, changed)

    def _follow(self, revision: int) -> None:
        self._stream = gateway.WatchStream(
            self.kv, self.keys.peers, revision + 1, self.idle_timeout
        )
        try:
            for result, _ in self._stream:
                if self._stop.is_set():
                    return
                self._apply(result.get("events", []))
        finally:
            self._stream = None
