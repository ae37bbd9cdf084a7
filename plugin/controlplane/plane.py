"""EtcdControlPlane: the driver's ``ControlPlane`` port over etcd, made of its parts.

The *keeper* thread (``keeper.py``) holds the node's lease and writes what ``outbox.py``
queued; the *watcher* thread (``watcher.py``) follows every node's endpoints and hands the
driver its snapshots; ``handover.py`` keeps the records published past a graceful stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from core.layout import StoreLayout
from driver.events import ControlPlaneEvents
from driver.peers import OnChanges, OnSnapshot, PeerRecord
from plugin.controlplane.handover import hand_over
from plugin.controlplane.keeper import Keeper
from plugin.controlplane.nodes import list_nodes
from plugin.controlplane.outbox import Outbox
from plugin.controlplane.watcher import PeerWatcher
from plugin.relay.feed import IDLE_TIMEOUT
from plugin.store.etcd import EtcdKV

log = logging.getLogger(__name__)


class EtcdControlPlane:
    def __init__(
        self,
        kv: EtcdKV,
        ttl: int,
        node: str,
        layout: StoreLayout,
        stopped_ttl: int | None = None,
        watch_kv: EtcdKV | None = None,
    ) -> None:
        """``watch_kv``: where the watcher follows the peers prefix (watch relays,
        ``plugin/relay``); etcd itself by default. Writes and the lease always go to etcd."""
        self.kv = kv
        self.watch_kv = watch_kv or kv
        self.keys = layout
        self.ttl = ttl
        self.node = node
        # None: a close lets the records lapse with the lease, as a kill does (tests).
        self.stopped_ttl = None if stopped_ttl is None else max(stopped_ttl, ttl)
        self._stop = threading.Event()
        self._outbox = Outbox()
        # Relays send a progress line every HEARTBEAT s: silence means a relay that is gone.
        idle = None if watch_kv is None else IDLE_TIMEOUT
        self._watcher = PeerWatcher(self.watch_kv, layout, self._stop, idle)
        self._keeper = Keeper(kv, layout, node, ttl, self._outbox, self._watcher, self._stop)
        self.connected = self._keeper.connected
        self._threads: list[threading.Thread] = []

    @property
    def events(self) -> ControlPlaneEvents:
        return self._keeper.events

    @events.setter
    def events(self, events: ControlPlaneEvents) -> None:
        self._keeper.events = self._watcher.events = events  # metrics hook

    def start(self, on_snapshot: OnSnapshot, on_changes: OnChanges | None = None) -> None:
        if self._threads:
            return
        self._watcher.on_snapshot = on_snapshot
        self._watcher.on_changes = on_changes
        for target, name in (
            (self._keeper.run, "swarmnet-keeper"),
            (self._watcher.run, "swarmnet-watch"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def watch(self, network_id: str) -> None:
        self._watcher.watch(network_id)

    def unwatch(self, network_id: str) -> None:
        self._watcher.unwatch(network_id)

    def publish(self, record: PeerRecord) -> None:
        """Queue the record; the keeper thread writes it (Join does not wait for etcd)."""
        self._outbox.publish(record)
        self._keeper.wake.set()

    def withdraw(self, network_id: str, endpoint_id: str) -> None:
        self._outbox.withdraw((network_id, endpoint_id))
        self._keeper.wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued has been written (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._outbox.idle():
                return True
            self._keeper.wake.set()
            time.sleep(0.01)
        return False

    def announce(self, info: Mapping[str, object]) -> None:
        """Put ``info`` into this node's record (written again with the next round)."""
        self._outbox.announce(info)
        self._keeper.wake.set()

    def nodes(self) -> dict[str, Mapping[str, object]]:
        return list_nodes(self.kv, self.keys)

    def describe(self) -> str:
        state = "connected" if self.connected.is_set() else "NOT connected"
        via = ""
        if self.watch_kv is not self.kv:
            via = f", peers through relays {','.join(self.watch_kv.endpoints)}"
        return f"etcd {','.join(self.kv.endpoints)} ({state}, lease TTL {self.ttl}s{via})"

    def close(self) -> None:
        if self.connected.is_set():
            self.flush(timeout=1.0)  # withdrawals queued just before a stop
        self._stop.set()
        self._keeper.wake.set()
        self._watcher.close_stream()
        for t in self._threads:
            t.join(timeout=5)
        if self.stopped_ttl and self.connected.is_set():
            if any(t.is_alive() for t in self._threads):
                log.warning("control plane: still busy at the stop; nothing handed over")
            else:
                hand_over(self._keeper, self.stopped_ttl)
