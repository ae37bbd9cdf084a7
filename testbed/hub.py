"""Several driver services in one process, as nodes sharing one store.

``Hub`` stands in for the etcd control plane (tests/integration covers that one):
each node's ``HubPlane`` publishes into the hub, and ``Hub.deliver()`` hands
every node a snapshot of each network it watches, as the etcd watcher does
after a change. Delivery is explicit, so a test decides when nodes learn.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from driver.peers import OnChanges, OnSnapshot, PeerRecord


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: dict[str, dict[str, PeerRecord]] = {}
        self.planes: list[HubPlane] = []

    def plane(self) -> HubPlane:
        made = HubPlane(self)
        self.planes.append(made)
        return made

    def deliver(self) -> None:
        """A snapshot of every watched network to every node; errors propagate."""
        for plane in list(self.planes):
            plane.deliver()


class HubPlane:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.watched: set[str] = set()
        self.on_snapshot: OnSnapshot | None = None

    def deliver(self) -> None:
        if self.on_snapshot is None:
            return
        for network_id in sorted(self.watched):
            with self.hub._lock:
                snapshot = dict(self.hub.records.get(network_id, {}))
            self.on_snapshot(network_id, snapshot)

    # -- the ControlPlane port ----------------------------------------------------

    def start(self, on_snapshot: OnSnapshot, on_changes: OnChanges | None = None) -> None:
        self.on_snapshot = on_snapshot  # snapshots only: the driver takes those always

    def watch(self, network_id: str) -> None:
        self.watched.add(network_id)

    def unwatch(self, network_id: str) -> None:
        self.watched.discard(network_id)

    def publish(self, record: PeerRecord) -> None:
        with self.hub._lock:
            self.hub.records.setdefault(record.network_id, {})[record.endpoint_id] = record

    def withdraw(self, network_id: str, endpoint_id: str) -> None:
        with self.hub._lock:
            self.hub.records.get(network_id, {}).pop(endpoint_id, None)

    def close(self) -> None:
        if self in self.hub.planes:
            self.hub.planes.remove(self)

    def describe(self) -> str:
        return "in-process hub (test)"

    def announce(self, info: Mapping[str, object]) -> None:
        self.announced = dict(info)

    def nodes(self) -> dict[str, Mapping[str, object]]:
        return {}
