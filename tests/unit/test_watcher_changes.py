"""plugin/controlplane/watcher.py between snapshots: one delivery of changes per network and
watch response, a snapshot when the driver cannot take changes, and no stale snapshot
handed over in the middle of a response (issue 16)."""

from __future__ import annotations

import base64
import ipaddress
import threading
from collections.abc import Callable, Mapping
from typing import Any

from core.layout import StoreLayout
from driver import mac
from driver.peers import PeerRecord
from plugin.controlplane.watcher import PeerWatcher

LAYOUT = StoreLayout("/swarmnet/v1")
A, B, C = "a" * 25, "b" * 25, "c" * 25


class ListingKV:
    """Answers the watcher's listing with ``records``; nothing else is called here."""

    def __init__(self, records: list[PeerRecord]) -> None:
        self.records = records

    def call(self, fn: Callable[[Any], Any], **_: Any) -> Any:
        return {"kvs": [kv(r) for r in self.records], "header": {"revision": 7}}


def record(net: str, n: int) -> PeerRecord:
    ip = ipaddress.ip_address(f"10.0.0.{n}")
    return PeerRecord(net, f"{n:02x}" * 32, ip, mac.from_ip(ip), ipaddress.ip_address("192.0.2.9"))


def kv(r: PeerRecord) -> dict[str, str]:
    key = LAYOUT.peer(r.network_id, r.endpoint_id)
    return {"key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(r.to_json()).decode()}


def put(r: PeerRecord) -> dict[str, Any]:
    return {"kv": kv(r)}


def delete(r: PeerRecord) -> dict[str, Any]:
    key = LAYOUT.peer(r.network_id, r.endpoint_id)
    return {"type": "DELETE", "kv": {"key": base64.b64encode(key.encode()).decode()}}


class Driver:
    def __init__(self, take_changes: bool | Exception = True) -> None:
        self.take_changes = take_changes
        self.snapshots: list[tuple[str, dict[str, PeerRecord], bool]] = []
        self.changes: list[tuple[str, dict[str, PeerRecord | None]]] = []
        self.during_changes: Callable[[], None] = lambda: None

    def on_snapshot(self, network_id: str, snapshot: Mapping[str, PeerRecord], *,
                    recheck: bool = False) -> None:
        self.snapshots.append((network_id, dict(snapshot), recheck))

    def on_changes(self, network_id: str, changes: Mapping[str, PeerRecord | None]) -> bool:
        self.changes.append((network_id, dict(changes)))
        self.during_changes()
        if isinstance(self.take_changes, Exception):
            raise self.take_changes
        return self.take_changes


def listed(driver: Driver, records: list[PeerRecord]) -> PeerWatcher:
    w = PeerWatcher(ListingKV(records), LAYOUT, threading.Event())  # type: ignore[arg-type]
    w.on_snapshot, w.on_changes = driver.on_snapshot, driver.on_changes
    w.watch(A)
    w.watch(B)
    w._list()
    driver.snapshots.clear()
    return w


def test_one_response_is_one_delivery_of_changes_per_watched_network() -> None:
    d = Driver()
    a1, a2, a3, b1, c1 = record(A, 1), record(A, 2), record(A, 3), record(B, 4), record(C, 5)
    w = listed(d, [a1])
    w._apply([put(a2), put(a3), delete(a1), put(b1), put(c1)])
    assert d.changes == [
        (A, {a2.endpoint_id: a2, a3.endpoint_id: a3, a1.endpoint_id: None}),
        (B, {b1.endpoint_id: b1}),
    ]
    assert d.snapshots == []
    w.resync()  # the state followed every event, the unwatched network's too
    assert d.snapshots == [(A, {a2.endpoint_id: a2, a3.endpoint_id: a3}, True),
                           (B, {b1.endpoint_id: b1}, True)]


def test_a_driver_that_cannot_take_the_changes_gets_a_snapshot() -> None:
    for refusal in (False, RuntimeError("kernel")):
        d = Driver(take_changes=refusal)
        a1, a2 = record(A, 1), record(A, 2)
        w = listed(d, [a1])
        w._apply([put(a2)])
        assert d.snapshots == [(A, {a1.endpoint_id: a1, a2.endpoint_id: a2}, False)]


def test_a_snapshot_from_another_thread_waits_for_the_response_being_delivered() -> None:
    d = Driver()
    a1, a2 = record(A, 1), record(A, 2)
    w = listed(d, [a1])
    resync = threading.Thread(target=w.resync)

    def meanwhile() -> None:
        resync.start()
        resync.join(0.2)
        assert resync.is_alive()  # held back: it must not copy the state mid-response

    d.during_changes = meanwhile
    w._apply([put(a2)])
    resync.join(5)
    assert (A, {a1.endpoint_id: a1, a2.endpoint_id: a2}, True) in d.snapshots
