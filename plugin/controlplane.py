"""The etcd control plane: publish our endpoints, watch everyone's.

Two kinds of key (``core.layout``), both on the node's lease:

    <root>/nodes/<node-id>               this node is alive, and what it can do:
                                         {"node", "ttl", "vtep", "esp", "esp_detail"};
                                         <node-id> is the one kept at <root>/local/node-id
    <root>/peers/<network>/<endpoint>    one endpoint: IP, MAC, VTEP (driver.peers.PeerRecord)

Every key a node writes hangs off one etcd lease with TTL = PEER_TTL. A node
that dies stops refreshing it; etcd then deletes its keys and every watcher
removes the dead node's FDB and neighbour entries, within the TTL.

Two threads: the *keeper* holds the lease and (re)publishes what this node
owns; the *watcher* lists the peers prefix, then follows a watch stream from
the listed revision and hands level-triggered snapshots to the driver. Any
error in either leads to a re-list / re-publish, so an etcd outage or a lost
watch ends with the store and the kernel converged again.

A graceful stop (SIGTERM: `docker plugin disable`, an upgrade) is not a death:
the node's containers keep running and its kernel entries stay. With
``stopped_ttl`` set, ``close`` moves everything the node publishes onto a
lease of that TTL, so the other nodes keep their entries for it while the
plugin is away; the next process puts everything on its own lease again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from core.layout import StoreLayout
from driver import names
from driver.events import NO_EVENTS, ControlPlaneEvents
from driver.peers import OnSnapshot, PeerRecord
from plugin.store.etcd import EtcdKV, StoreUnavailable, b64, prefix_end

log = logging.getLogger(__name__)

RESYNC_INTERVAL = 30.0  # seconds between full diffs of every watched network
# Seconds a stopped plugin's endpoints stay published: an upgrade or a restart by hand
# takes far less; a node that dies while its plugin is stopped is forgotten after this.
STOPPED_TTL = 300
TXN_BATCH = 64  # operations per etcd transaction (etcd's default limit is 128)


class EtcdControlPlane:
    def __init__(
        self, kv: EtcdKV, ttl: int, node: str, layout: StoreLayout, stopped_ttl: int | None = None
    ) -> None:
        self.kv = kv
        self.keys = layout
        self.ttl = ttl
        self.node = node
        # None: a close lets the records lapse with the lease, as a kill does (tests).
        self.stopped_ttl = None if stopped_ttl is None else max(stopped_ttl, ttl)
        self._lock = threading.Lock()
        self._published: dict[tuple[str, str], PeerRecord] = {}
        self._pending_deletes: set[tuple[str, str]] = set()
        # Written by the keeper in the order of the calls' last word per key:
        # a record to put, or None to delete.
        self._outbox: dict[tuple[str, str], PeerRecord | None] = {}
        self._sending = False
        self._dirty = True  # something we own may be missing from etcd
        self._info: dict[str, object] = {}  # announced facts for the node record
        self._lease: int | None = None
        self._state: dict[str, dict[str, PeerRecord]] = {}
        # No snapshot before the first complete list: an empty state that only means
        # "not read yet" would wipe the entries a previous run programmed (and, with
        # etcd down at start, keep them wiped until it is back).
        self._listed = False
        self._watched: set[str] = set()
        self._on_snapshot: OnSnapshot | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._stream: Any = None
        self._threads: list[threading.Thread] = []
        self.connected = threading.Event()
        self.events: ControlPlaneEvents = NO_EVENTS  # metrics hook (driver/events.py)

    # -- port --------------------------------------------------------------

    def start(self, on_snapshot: OnSnapshot) -> None:
        if self._threads:
            return
        self._on_snapshot = on_snapshot
        for target, name in ((self._keeper, "swarmnet-keeper"), (self._watcher, "swarmnet-watch")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def watch(self, network_id: str) -> None:
        with self._lock:
            self._watched.add(network_id)
        self._deliver(network_id)

    def unwatch(self, network_id: str) -> None:
        with self._lock:
            self._watched.discard(network_id)

    def publish(self, record: PeerRecord) -> None:
        """Queue the record; the keeper thread writes it (Join does not wait for etcd)."""
        key = (record.network_id, record.endpoint_id)
        with self._lock:
            self._published[key] = record
            self._pending_deletes.discard(key)
            self._outbox[key] = record
        self._wake.set()

    def withdraw(self, network_id: str, endpoint_id: str) -> None:
        key = (network_id, endpoint_id)
        with self._lock:
            self._published.pop(key, None)
            self._outbox[key] = None
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued has been written (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._outbox and not self._sending and not self._dirty:
                    return True
            self._wake.set()
            time.sleep(0.01)
        return False

    def announce(self, info: Mapping[str, object]) -> None:
        """Put ``info`` into this node's record (written again with the next round)."""
        with self._lock:
            self._info = dict(info)
            self._dirty = True
        self._wake.set()

    def nodes(self) -> dict[str, Mapping[str, object]]:
        try:
            listed = self.kv.list(self.keys.nodes)
        except StoreUnavailable:
            return {}
        out: dict[str, Mapping[str, object]] = {}
        for key, raw in listed.items():
            with contextlib.suppress(ValueError):
                rec = json.loads(raw)
                if isinstance(rec, dict):
                    out[key[len(self.keys.nodes) :]] = rec
        return out

    def describe(self) -> str:
        state = "connected" if self.connected.is_set() else "NOT connected"
        return f"etcd {','.join(self.kv.endpoints)} ({state}, lease TTL {self.ttl}s)"

    def close(self) -> None:
        if self.connected.is_set():
            self.flush(timeout=1.0)  # withdrawals queued just before a stop
        self._stop.set()
        self._wake.set()
        self._close_stream()
        for t in self._threads:
            t.join(timeout=5)
        if self.stopped_ttl and self.connected.is_set():
            if any(t.is_alive() for t in self._threads):
                log.warning("control plane: still busy at the stop; nothing handed over")
            else:
                self._hand_over(self.stopped_ttl)

    def _hand_over(self, ttl: int) -> None:
        """Keep what this node publishes for ``ttl`` seconds past a graceful stop.

        Without it the records lapse with our lease within PEER_TTL, and every other
        node drops this node's FDB and neighbour entries while its containers still run:
        an upgrade slower than PEER_TTL would cut them off until the new process
        publishes again. Guarded by our node record still being on our lease: gunicorn's
        SIGHUP starts the new worker before the old one stops, and the new one's records
        must stay on the new one's lease.
        """
        with self._lock:
            lease = self._lease
            records = list(self._published.values())
            deletes = {k for k, v in self._outbox.items() if v is None} | self._pending_deletes
            deletes -= set(self._published)
            info = dict(self._info)
        if lease is None:
            return
        node_key = self.keys.nodes + self.node
        try:
            stopped = self._grant(ttl)
            ops: list[dict[str, Any]] = [
                {"request_delete_range": {"key": b64(self.keys.peer(*key))}}
                for key in sorted(deletes)
            ]
            ops += [
                {
                    "request_put": {
                        "key": b64(self.keys.peer(r.network_id, r.endpoint_id)),
                        "value": b64(r.to_json()),
                        "lease": stopped,
                    }
                }
                for r in records
            ]
            record = {**info, "node": self.node, "ttl": self.ttl, "stopped": True}
            # Last, so the guard of every batch before it still sees our lease.
            ops.append(
                {
                    "request_put": {
                        "key": b64(node_key),
                        "value": b64(json.dumps(record).encode()),
                        "lease": stopped,
                    }
                }
            )
            guard = [{"key": b64(node_key), "target": "LEASE", "result": "EQUAL", "lease": lease}]
            for start in range(0, len(ops), TXN_BATCH):
                txn = {"compare": guard, "success": ops[start : start + TXN_BATCH], "failure": []}

                def commit(c: Any, t: dict[str, Any] = txn) -> Any:
                    return c.post(c.get_url("/kv/txn"), json=t)

                result = self.kv.call(commit)
                if not result.get("succeeded"):
                    log.info(
                        "control plane: a newer process of this node publishes already; "
                        "nothing handed over"
                    )
                    return
        except StoreUnavailable as e:
            log.warning(
                "control plane: could not keep this node's endpoints published past "
                "the stop (%s); the others drop them within %d s",
                e,
                self.ttl,
            )
            return
        log.info(
            "control plane: %d endpoint(s) stay published for %d s while the plugin is "
            "stopped (lease %x)",
            len(records),
            ttl,
            stopped,
        )

    # -- keeper ------------------------------------------------------------

    def _grant(self, ttl: int | None = None) -> int:
        payload = {"TTL": ttl or self.ttl, "ID": 0}
        result = self.kv.call(lambda c: c.post(c.get_url("/lease/grant"), json=payload))
        return int(result["ID"])

    def _keepalive(self, lease: int) -> int:
        result = self.kv.call(lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": lease}))
        return int(result.get("result", {}).get("TTL", -1))

    def _republish(self, lease: int) -> None:
        with self._lock:
            # Everything queued is a record we own or a withdrawal: this run covers it.
            self._pending_deletes |= {k for k, v in self._outbox.items() if v is None}
            self._pending_deletes -= set(self._published)
            self._outbox.clear()
            records = list(self._published.values())
            deletes = set(self._pending_deletes)
            info = dict(self._info)
        self.kv.put(
            self.keys.nodes + self.node,
            json.dumps({**info, "node": self.node, "ttl": self.ttl}).encode(),
            lease=lease,
        )
        for rec in records:
            self.kv.put(self.keys.peer(rec.network_id, rec.endpoint_id), rec.to_json(), lease=lease)
        for key in deletes:
            self.kv.delete(self.keys.peer(*key))
        with self._lock:
            self._pending_deletes -= deletes
        log.info("control plane: published %d endpoint(s) under lease %x", len(records), lease)

    def _send(self, lease: int) -> None:
        """Write what was queued since the last run, in one transaction per batch."""
        with self._lock:
            batch, self._outbox = self._outbox, {}
            self._sending = bool(batch)
        items = list(batch.items())
        try:
            for start in range(0, len(items), TXN_BATCH):
                ops: list[dict[str, Any]] = []
                for key, rec in items[start : start + TXN_BATCH]:
                    if rec is None:
                        ops.append({"request_delete_range": {"key": b64(self.keys.peer(*key))}})
                    else:
                        put = {"key": b64(self.keys.peer(*key)), "value": b64(rec.to_json())}
                        ops.append({"request_put": {**put, "lease": lease}})
                txn: dict[str, Any] = {"compare": [], "success": ops, "failure": []}

                def commit(c: Any, t: dict[str, Any] = txn) -> Any:
                    return c.post(c.get_url("/kv/txn"), json=t)

                self.kv.call(commit)
        except BaseException:
            with self._lock:
                # The full republish after reconnecting writes every record we own and
                # deletes every withdrawn one; remember the withdrawals for it.
                self._pending_deletes |= {k for k, v in batch.items() if v is None}
                self._pending_deletes -= set(self._published)
                self._dirty = True
            raise
        finally:
            with self._lock:
                self._sending = False

    def _resync(self) -> None:
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

    def _keeper(self) -> None:
        interval = max(1.0, self.ttl / 3)
        last_resync = time.monotonic()
        next_keepalive = 0.0  # the first round grants a lease at once
        while not self._stop.is_set():
            if time.monotonic() - last_resync >= RESYNC_INTERVAL:
                last_resync = time.monotonic()
                self._resync()
            try:
                with self._lock:
                    lease, dirty = self._lease, self._dirty
                if lease is None or time.monotonic() >= next_keepalive:
                    # Woken for queued records only, the lease needs no round trip.
                    if lease is not None and self._keepalive(lease) <= 0:
                        log.warning("control plane: lease %x expired; publishing again", lease)
                        lease = None
                    if lease is None:
                        lease = self._grant()
                        dirty = True
                    next_keepalive = time.monotonic() + interval
                if dirty:
                    with self._lock:
                        self._lease, self._dirty = lease, False
                    self._republish(lease)
                else:
                    with self._lock:
                        self._lease = lease
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
                with self._lock:
                    self._dirty = True
                # A stream cut off without a FIN would otherwise hang the watcher.
                self._close_stream()
            except Exception:
                log.exception("control plane: keeper error")
                next_keepalive = 0.0
                with self._lock:
                    self._dirty = True
            until_keepalive = next_keepalive - time.monotonic() if next_keepalive else interval
            self._wake.wait(max(0.0, until_keepalive))
            self._wake.clear()

    # -- watcher -----------------------------------------------------------

    def _deliver(self, network_id: str, recheck: bool = False) -> None:
        with self._lock:
            if not self._listed or network_id not in self._watched or self._on_snapshot is None:
                return
            snapshot: Mapping[str, PeerRecord] = dict(self._state.get(network_id, {}))
            callback = self._on_snapshot
        try:
            callback(network_id, snapshot, recheck=recheck)
        except Exception:
            log.exception("network %s: programming peers failed", names.short(network_id))

    def _list(self) -> int:
        payload = {"key": b64(self.keys.peers), "range_end": b64(prefix_end(self.keys.peers))}
        result = self.kv.call(lambda c: c.post(c.get_url("/kv/range"), json=payload))
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

    def _apply(self, event: Mapping[str, Any]) -> None:
        kv = event["kv"]
        key = base64.b64decode(kv["key"]).decode()
        parts = key[len(self.keys.peers) :].split("/")
        if len(parts) != 2:
            return
        nid, eid = parts
        rec = None
        if event.get("type") == "DELETE":
            with self._lock:
                self._state.get(nid, {}).pop(eid, None)
        else:
            rec = self._decode(kv)
            if rec is None:
                return
            with self._lock:
                self._state.setdefault(nid, {})[eid] = rec
        if nid in self._watched:
            self.events.record_changed(nid, eid, rec)  # metrics hook
        self._deliver(nid)

    def _close_stream(self) -> None:
        """Cut the watch stream from another thread.

        Closing a requests response while a thread reads it blocks on the
        reader's lock, so shut the socket down instead: the reader then sees
        end-of-stream and closes the response itself.
        """
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)

    def _follow(self, revision: int) -> None:
        request = {
            "create_request": {
                "key": b64(self.keys.peers),
                "range_end": b64(prefix_end(self.keys.peers)),
                "start_revision": revision + 1,
            }
        }

        def open_stream(c: Any) -> Any:
            return c.session.post(c.get_url("/watch"), json=request, stream=True, timeout=(5, None))

        resp = self.kv.call(open_stream)
        self._stream = resp
        try:
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                chunk = json.loads(line)
                result = chunk.get("result", {})
                if "error" in chunk:
                    raise RuntimeError(f"watch failed: {chunk['error']}")
                if result.get("canceled") or result.get("compact_revision"):
                    raise RuntimeError("watch cancelled by etcd (compacted?)")
                for event in result.get("events", []):
                    self._apply(event)
        finally:
            self._stream = None
            resp.close()

    def _watcher(self) -> None:
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
