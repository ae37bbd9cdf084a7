"""Which manager runs the load-balancing collector: one writer of the service records.

``LocalElection``: one host with the embedded store; this node always leads.

``EtcdElection``: the leader holds one key, ``<root>/lb/collector`` (core.layout), created only
if absent (a txn comparing its create revision with 0) and attached to the candidate's
lease. A candidate keeps its lease alive every TTL/3 and tries to take the key about
once a second, so when a leader dies its lease expires after the TTL and a standby
leads within about a second more. ``close`` revokes the lease, which deletes the key
at once, so a successor need not wait for the TTL.

A leader that cannot reach etcd does not know whether its lease still lives. It
counts the lease as gone at (time the last successful keepalive was *sent* + the TTL
etcd granted then) minus a margin: etcd can only expire it later than that, so the
old leader has stopped before a successor can take the key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Protocol

from plugin.store.etcd import EtcdKV, b64

log = logging.getLogger(__name__)

DEFAULT_TTL = 10
SAFETY_MARGIN = 1.0  # seconds before the lease's earliest possible expiry we stop leading
MAX_RETRY = 1.0  # seconds between a standby's attempts to take the key


class Election(Protocol):
    def start(self) -> None:
        """Start campaigning (returns at once; idempotent)."""
        ...

    def is_leader(self) -> bool:
        """True while this node may write; cheap (no I/O): check it before every write."""
        ...

    def close(self, timeout: float = 2.0) -> None:
        """Stop campaigning and give up leadership (``start`` may campaign again)."""
        ...

    def describe(self) -> dict[str, Any]: ...


class LocalElection:
    """One host, embedded store: nobody else can write, so this node always leads."""

    def start(self) -> None:
        return None

    def is_leader(self) -> bool:
        return True

    def close(self, timeout: float = 2.0) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "leader": True}


def default_identity() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


class _Run:
    """One campaign, from ``start`` to ``close``: its thread owns its lease."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.revoke = True
        self.lease: int | None = None
        self.leader = False
        self.valid_until = 0.0  # monotonic: the lease may have expired after this
        self.thread: threading.Thread | None = None


class EtcdElection:
    def __init__(
        self,
        kv: EtcdKV,
        ttl: int = DEFAULT_TTL,
        identity: str | None = None,
        *,
        key: str,
    ) -> None:
        if ttl < 2:
            raise ValueError("election TTL must be at least 2 seconds")
        self.kv = kv
        self.ttl = ttl
        self.key = key
        self.identity = identity or default_identity()
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._holder: str | None = None  # who leads, as last read from etcd
        self._last_error: str | None = None

    # -- port ----------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._run is not None:
                return
            run = self._run = _Run()
            run.thread = threading.Thread(
                target=self._campaign_loop, args=(run,), name="swarmnet-election", daemon=True
            )
        run.thread.start()

    def is_leader(self) -> bool:
        with self._lock:
            run = self._run
            return (
                run is not None
                and run.leader
                and time.monotonic() < run.valid_until - SAFETY_MARGIN
            )

    def close(self, timeout: float = 2.0, revoke: bool = True) -> None:
        """Stop leading at once; revoke the lease (in the election thread, waited for up to
        ``timeout`` s) so a successor need not wait. ``revoke=False`` leaves the lease to
        expire, as a crashed node would (tests)."""
        with self._lock:
            run, self._run = self._run, None
            if run is None:
                return
            run.leader = False
            run.revoke = revoke
        run.stop.set()
        if run.thread is not None:
            run.thread.join(timeout)

    @property
    def _lease(self) -> int | None:
        """The current campaign's lease (tests)."""
        with self._lock:
            return None if self._run is None else self._run.lease

    def describe(self) -> dict[str, Any]:
        leader = self.is_leader()
        with self._lock:
            return {
                "kind": "etcd",
                "key": self.key,
                "identity": self.identity,
                "leader": leader,
                "holder": self._holder,
                "lease_ttl": self.ttl,
                "error": self._last_error,
            }

    # -- etcd ------------------------------------------------------------------

    def _grant(self) -> tuple[int, float]:
        sent = time.monotonic()
        result = self.kv.call(
            lambda c: c.post(c.get_url("/lease/grant"), json={"TTL": self.ttl, "ID": 0})
        )
        return int(result["ID"]), sent + int(result.get("TTL", self.ttl))

    def _keepalive(self, lease: int) -> float | None:
        """The new earliest-expiry time, or None if the lease is gone."""
        sent = time.monotonic()
        result = self.kv.call(lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": lease}))
        ttl = int(result.get("result", {}).get("TTL", -1))
        return sent + ttl if ttl > 0 else None

    def _revoke(self, lease: int) -> None:
        self.kv.call(lambda c: c.post(c.get_url("/lease/revoke"), json={"ID": lease}))

    def _campaign(self, lease: int) -> bool:
        """Take the key if nobody holds it; True if it is (now) held under our lease."""
        k = b64(self.key)
        value = json.dumps({"identity": self.identity, "lease": f"{lease:x}"}).encode()
        txn = {
            "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": k, "value": b64(value), "lease": lease}}],
            "failure": [{"request_range": {"key": k}}],
        }
        result = self.kv.call(lambda c: c.post(c.get_url("/kv/txn"), json=txn))
        if result.get("succeeded"):
            holder: str | None = self.identity
            ours = True
        else:
            responses = result.get("responses") or [{}]
            kvs = responses[0].get("response_range", {}).get("kvs") or []
            if not kvs:
                return False  # deleted in between: the next round takes it
            ours = int(kvs[0].get("lease", 0)) == lease
            holder = _holder(kvs[0].get("value", ""))
        with self._lock:
            self._holder = holder
        return ours

    # -- thread ----------------------------------------------------------------

    def _set(self, run: _Run, leader: bool, valid_until: float | None = None) -> None:
        with self._lock:
            if run.stop.is_set():
                leader = False  # closed: never lead again in this run
            if leader and not run.leader:
                log.info("load-balancing collector: this node leads (%s)", self.identity)
            elif run.leader and not leader:
                log.warning("load-balancing collector: this node no longer leads")
            run.leader = leader
            if valid_until is not None:
                run.valid_until = valid_until

    def _error(self, error: str | None) -> None:
        with self._lock:
            if error != self._last_error:
                if error is None:
                    log.info("load-balancing election: etcd answers again")
                else:
                    log.warning("load-balancing election: %s", error)
            self._last_error = error

    def _campaign_loop(self, run: _Run) -> None:
        keepalive_every = self.ttl / 3
        retry = min(MAX_RETRY, keepalive_every)
        next_keepalive = 0.0
        while not run.stop.is_set():
            try:
                if run.lease is None:
                    lease, valid_until = self._grant()
                    with self._lock:
                        run.lease = lease
                    self._set(run, False, valid_until)
                    next_keepalive = time.monotonic() + keepalive_every
                elif time.monotonic() >= next_keepalive:
                    renewed = self._keepalive(run.lease)
                    if renewed is None:
                        log.warning("load-balancing election: lease %x expired", run.lease)
                        with self._lock:
                            run.lease = None
                        self._set(run, False)
                        continue
                    self._set(run, run.leader, renewed)
                    next_keepalive = time.monotonic() + keepalive_every
                if run.stop.is_set():
                    break
                self._set(run, self._campaign(run.lease))
                self._error(None)
            except Exception as e:
                # Unreachable etcd included: is_leader turns False by itself once the
                # lease may have expired; until then the leader keeps leading.
                self._error(str(e))
                next_keepalive = 0.0
            run.stop.wait(retry)
        self._set(run, False)
        with self._lock:
            held, run.lease = run.lease, None
        if held is not None and run.revoke:
            with contextlib.suppress(Exception):
                self._revoke(held)


def _holder(value_b64: str) -> str | None:
    try:
        return str(json.loads(base64.b64decode(value_b64))["identity"])
    except (ValueError, KeyError, TypeError):
        return None
