"""The load-balancing collector: on the elected manager, keep one record per service VIP.

It lists services and tasks on every service or node event and every ``poll_interval``
(Docker 20.10 sends no task events), computes the records (``driver.lb.collect``) and
makes the store hold exactly them under ``<root>/lb/services/`` (core.layout): stale
records first, then new and changed ones, so a fwmark freed by a removed service is
gone from the store before another service's record can carry it.

Nothing is written or deleted unless the listing succeeded: a Docker error or a store
outage leaves the records as they are (the data path keeps balancing on them). Only a
swarm manager campaigns and collects; on a worker the thread only checks its role. The
election is checked before every write, so a node that lost it stops at once.

``Collector`` owns ``view`` and ``election``: ``close`` closes both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from core.layout import StoreLayout
from driver import names
from driver.lb import collect
from driver.lb.model import ServiceRecord
from driver.store_port import KV
from driver.vni import VniTable
from plugin.election import Election

log = logging.getLogger(__name__)

EVENT_WAIT = 10.0  # seconds one event read may block (dockerd ends the stream then)
CLOSE_WAIT = 0.3  # seconds close() waits for the collector's threads
# ... and for the election to revoke its lease (it goes on after that, in its own thread)
ELECTION_CLOSE_WAIT = 0.2


class ServiceView(Protocol):
    """What the collector asks of dockerd (``plugin.swarmview.SwarmView``)."""

    def is_manager(self) -> bool: ...

    def services(self) -> list[dict[str, Any]]: ...

    def tasks(self) -> list[dict[str, Any]]: ...

    def nodes(self) -> list[dict[str, Any]]: ...

    def wait_for_change(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


def vni_networks(shared: KV, layout: StoreLayout) -> Callable[[], set[str]]:
    """Our networks: those in the VNI table (AllocateNetwork fills it on the manager)."""

    def ours() -> set[str]:
        return set(VniTable.load(shared.get(layout.vni)).by_network)

    return ours


class LostLeadership(Exception):
    """The election was lost in the middle of a run; the rest of it is not written."""


class Collector:
    def __init__(
        self,
        view: ServiceView,
        shared: KV,
        election: Election,
        our_networks: Callable[[], set[str]],
        poll_interval: float = 2.0,
        *,
        layout: StoreLayout,
    ) -> None:
        self.view = view
        self.shared = shared
        self.keys = layout
        self.election = election
        self.our_networks = our_networks
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._campaigning = False
        self._role = "unknown"
        self._services = 0
        self._backends = 0
        self._last_run: float | None = None  # wall clock of the last complete run
        self._last_error: str | None = None
        self._runs = 0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        for target, name in ((self._loop, "swarmnet-lb-collect"), (self._events, "swarmnet-lb-ev")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop writing at once; returns within about half a second even if dockerd or etcd
        hang (a thread stuck in a request then ends on its own, writing nothing more)."""
        self._stop.set()
        self._wake.set()
        self.view.close()  # cuts an event wait short
        self.election.close(timeout=ELECTION_CLOSE_WAIT)
        deadline = time.monotonic() + CLOSE_WAIT
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        """Run a collection now (tests, and anything that knows something changed)."""
        self._wake.set()

    def describe(self) -> dict[str, Any]:
        """For ``swarmnet status``."""
        election = self.election.describe()
        with self._lock:
            last = self._last_run
            return {
                "Role": self._role,
                "Services": self._services,
                "Backends": self._backends,
                "LastRun": None if last is None else datetime.fromtimestamp(last, UTC).isoformat(),
                "Runs": self._runs,
                "LastError": self._last_error,
                "Election": election,
            }

    # -- threads -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # a bug must not end load balancing for good
                log.exception("load balancing: collector run failed")
            self._wake.wait(self.poll_interval)

    def _events(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            with self._lock:
                leading = self._role == "leader"
            if not leading:
                # Only the leader collects; a worker sees no service events anyway. Not
                # waiting on dockerd here also keeps the SDK out of workers' memory.
                self._stop.wait(1.0)
                continue
            try:
                changed = self.view.wait_for_change(EVENT_WAIT)
                backoff = 0.5
            except Exception as e:
                log.debug("load balancing: waiting for docker events: %s", e)
                # The poll still runs; do not hammer a dockerd that refuses.
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if changed:
                self._wake.set()

    # -- one run -----------------------------------------------------------------

    def _set_role(self, role: str) -> None:
        with self._lock:
            if role != self._role:
                log.info("load balancing: collector role %s", role)
            self._role = role

    def _fail(self, error: str) -> None:
        if self._stop.is_set():
            return  # closing: the view and the election were closed under the run
        with self._lock:
            if error != self._last_error:
                log.warning("load balancing: %s", error)
            self._last_error = error

    def run_once(self) -> bool:
        """One collection, if this node is the leading manager. True if it completed."""
        try:
            manager = self.view.is_manager()
        except Exception as e:
            self._fail(f"asking dockerd for the swarm role failed: {e}")
            return False
        if not manager:
            if self._campaigning:
                self.election.close(timeout=ELECTION_CLOSE_WAIT)
                self._campaigning = False
            self._set_role("worker")
            return False
        if not self._campaigning:
            if self._stop.is_set():
                return False
            self.election.start()
            self._campaigning = True
        if not self.election.is_leader():
            self._set_role("standby")
            return False
        self._set_role("leader")
        try:
            services = self.view.services()
            tasks = self.view.tasks()
            down = collect.down_nodes(self.view.nodes())
            ours = self.our_networks()
        except Exception as e:
            self._fail(f"listing services and tasks failed; records left as they are: {e}")
            return False
        try:
            written = self._write(services, tasks, ours, down)
        except LostLeadership:
            self._set_role("standby")
            return False
        except Exception as e:
            self._fail(f"writing service records failed: {e}")
            return False
        with self._lock:
            self._services = len(written)
            self._backends = sum(len(r.backends) for r in written)
            self._last_run = time.time()
            self._last_error = None
            self._runs += 1
        return True

    def _check(self) -> None:
        if self._stop.is_set() or not self.election.is_leader():
            raise LostLeadership()

    def _write(
        self,
        services: list[dict[str, Any]],
        tasks: list[dict[str, Any]],
        ours: set[str],
        down: set[str],
    ) -> list[ServiceRecord]:
        wanted = collect.targets(services, ours)
        current = self.shared.list(self.keys.lb_services)
        self._check()
        raw = self.shared.update(self.keys.lb_marks, collect.assign_marks({t.key for t in wanted}))
        marks = collect.MarkTable.load(raw).by_target
        records = collect.records(wanted, tasks, marks, down)
        key_of = {r: self.keys.lb_service(r.network_id, r.service_id) for r in records}
        desired = {key_of[r]: r.to_json() for r in records}
        for key in sorted(set(current) - set(desired)):
            self._check()
            self.shared.delete(key)
            log.info("load balancing: removed %s", self._describe_key(key))
        for rec in records:
            value = desired[key_of[rec]]
            if current.get(key_of[rec]) == value:
                continue
            self._check()
            self.shared.put(key_of[rec], value)
            log.info(
                "load balancing: service %s (%s) on network %s: VIP %s, fwmark %#x, %s",
                names.short(rec.service_id),
                rec.name,
                names.short(rec.network_id),
                rec.vip,
                rec.fwmark,
                _describe_backends(rec),
            )
        return records

    def _describe_key(self, key: str) -> str:
        network_id, _, service_id = key[len(self.keys.lb_services) :].partition("/")
        return f"service {names.short(service_id)} on network {names.short(network_id)}"


def _describe_backends(rec: ServiceRecord) -> str:
    live = sum(1 for b in rec.backends if b.weight > 0)
    draining = len(rec.backends) - live
    return f"{live} backend(s)" + (f", {draining} draining" if draining else "")
