"""The keeper thread: it holds this node's lease and writes what the node publishes.

Every key a node writes hangs off one etcd lease with TTL = PEER_TTL. The keeper refreshes
it every TTL/3; when it is lost (etcd was away longer than the TTL) it takes a new one and
publishes everything again. Between refreshes it writes what ``Outbox`` queued, in
transactions. Every RESYNC_INTERVAL it has the watcher hand every watched network its
snapshot again, the first time at a random point of the first interval.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from core.layout import StoreLayout
from driver.events import NO_EVENTS, ControlPlaneEvents
from plugin.controlplane import gateway
from plugin.controlplane.nodes import node_key, node_value
from plugin.controlplane.outbox import Outbox
from plugin.controlplane.watcher import PeerWatcher
from plugin.store.etcd import EtcdKV, StoreUnavailable

log = logging.getLogger(__name__)

RESYNC_INTERVAL = 30.0  # seconds between full diffs of every watched network


class Keeper:
    def __init__(
        self,
        kv: EtcdKV,
        keys: StoreLayout,
        node: str,
        ttl: int,
        outbox: Outbox,
        watcher: PeerWatcher,
        stop: threading.Event,
        *,
        phase: Callable[[], float] = random.random,  # in [0, 1): where the first resync falls
    ) -> None:
        self.kv = kv
        self.keys = keys
        self.node = node
        self.ttl = ttl
        self.outbox = outbox
        self.watcher = watcher
        self._stop = stop
        self._phase = phase
        self.wake = threading.Event()
        self.lease: int | None = None
        self.connected = threading.Event()
        self.events: ControlPlaneEvents = NO_EVENTS  # metrics hook (driver/events.py)

    def run(self) -> None:
        interval = max(1.0, self.ttl / 3)
        # Nodes that start together (a cluster's reboot, the scale simulator) would all
        # resync at the same moments for ever, every node's full diff in one burst.
        next_resync = time.monotonic() + self._phase() * RESYNC_INTERVAL
        next_keepalive = 0.0  # the first round grants a lease at once
        while not self._stop.is_set():
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + RESYNC_INTERVAL
                self.watcher.resync()
            try:
                lease, dirty = self.lease, self.outbox.dirty()
                if lease is None or time.monotonic() >= next_keepalive:
                    # Woken for queued records only, the lease needs no round trip.
                    if lease is not None and gateway.keepalive(self.kv, lease) <= 0:
                        log.warning("control plane: lease %x expired; publishing again", lease)
                        lease = None
                    if lease is None:
                        lease = gateway.grant(self.kv, self.ttl)
                        dirty = True
                    next_keepalive = time.monotonic() + interval
                self.lease = lease
                if dirty:
                    self.outbox.set_dirty(False)
                    self._republish(lease)
                else:
                    self._send(lease)
                if not self.connected.is_set():
                    log.info("control plane: connected to etcd")
                self.connected.set()
                self.events.etcd_reachable(True)  # metrics hook
            except StoreUnavailable as e:
                if self.connected.is_set():
                    log.warning("control plane: etcd unreachable: %s", e)
                self.connected.clear()
                self.events.etcd_reachable(False)  # metrics hook
                next_keepalive = 0.0
                self.outbox.set_dirty()
                # A stream cut off without a FIN would otherwise hang the watcher.
                self.watcher.close_stream()
            except Exception:
                log.exception("control plane: keeper error")
                next_keepalive = 0.0
                self.outbox.set_dirty()
            until_keepalive = next_keepalive - time.monotonic() if next_keepalive else interval
            # Not only at keepalive rounds, which nodes started together share.
            until_resync = next_resync - time.monotonic()
            self.wake.wait(max(0.0, min(until_keepalive, until_resync)))
            self.wake.clear()

    def _republish(self, lease: int) -> None:
        records, deletes, info = self.outbox.take_all()
        record = node_value(info, self.node, self.ttl)
        self.kv.put(node_key(self.keys, self.node), record, lease=lease)
        for rec in records:
            self.kv.put(self.keys.peer(rec.network_id, rec.endpoint_id), rec.to_json(), lease=lease)
        for key in deletes:
            self.kv.delete(self.keys.peer(*key))
        self.outbox.deleted(deletes)
        log.info("control plane: published %d endpoint(s) under lease %x", len(records), lease)

    def _send(self, lease: int) -> None:
        """Write what was queued since the last run, in one transaction per batch."""
        batch = self.outbox.take_queued()
        ops = [
            gateway.delete_op(self.keys.peer(*key))
            if rec is None
            else gateway.put_op(self.keys.peer(*key), rec.to_json(), lease)
            for key, rec in batch.items()
        ]
        ok = False
        try:
            gateway.commit(self.kv, ops)
            ok = True
        finally:
            self.outbox.sent(batch, ok)
