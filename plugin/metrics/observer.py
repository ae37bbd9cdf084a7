"""Metrics the driver and the control plane push: the DriverEvents and ControlPlaneEvents
ports (driver/events.py) turned into Prometheus counters and histograms.

Everything here is counted from events only this process sees; state (networks, pools,
SAs, ...) is read at scrape time instead (:mod:`plugin.metrics.scrape`). An observer must
never break its caller, so every hook swallows and logs its own errors.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.iptypes import IPAddress
from driver.peers import PeerRecord, Snapshot
from plugin.metrics.repairs import REPAIR_KINDS, classify

log = logging.getLogger(__name__)

# Convergence is milliseconds on a quiet node; an etcd outage or a slow kernel makes it
# seconds. Buckets up to a minute, so a p99 alert at 5 s has buckets on both sides.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Records waiting for their kernel entry. A record of a network whose programming keeps
# failing waits for good: past this many, the oldest are dropped (and not measured).
MAX_PENDING = 50_000

F = TypeVar("F", bound=Callable[..., None])


def _never_raises(fn: F) -> F:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("metrics: %s failed", fn.__name__)

    return wrapped  # type: ignore[return-value]


class Observer:
    """Implements DriverEvents and ControlPlaneEvents into ``registry``."""

    def __init__(
        self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.entries = Counter(
            "swarmnet_kernel_entries_programmed_total",
            "FDB and neighbour entries the driver wrote for remote peers (one of each per "
            "peer), by table and operation.",
            ["table", "op"],
            registry=registry,
        )
        self.repairs = Counter(
            "swarmnet_reconcile_repairs_total",
            "Changes reconciliation made to bring the kernel and the stores back to what "
            "they should be, by kind (at start, and peer entries repaired on a recheck).",
            ["kind"],
            registry=registry,
        )
        self.lag = Histogram(
            "swarmnet_convergence_lag_seconds",
            "From a remote peer record's etcd revision arriving on this node's watch to its "
            "FDB and neighbour entries being programmed.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.watch_restarts = Counter(
            "swarmnet_etcd_watch_restarts_total",
            "Times the etcd watch stream ended or failed and the control plane listed again.",
            registry=registry,
        )
        self.rotations = Counter(
            "swarmnet_ipsec_key_rotations_total",
            "IPsec key generations this node made, by trigger (request or interval).",
            ["trigger"],
            registry=registry,
        )
        self.ipsec_failures = Counter(
            "swarmnet_ipsec_failures_total",
            "IPsec steps that failed: rotation (no new generation could be made) or sync "
            "(a background round of programming SAs and policies; a failed interval "
            "rotation fails its round too).",
            ["what"],
            registry=registry,
        )
        self.scrape_errors = Counter(
            "swarmnet_scrape_errors_total",
            "Parts of a scrape whose state could not be read (their metrics are left out).",
            ["part"],
            registry=registry,
        )
        for table in ("fdb", "neighbour"):
            for op in ("add", "remove"):
                self.entries.labels(table, op)
        for kind in REPAIR_KINDS:
            self.repairs.labels(kind)
        for trigger in ("request", "interval"):
            self.rotations.labels(trigger)
        for what in ("rotation", "sync"):
            self.ipsec_failures.labels(what)
        self._etcd = _Outages(clock)
        # (network, endpoint) -> (when its watch event came, the record put)
        self._pending: dict[tuple[str, str], tuple[float, PeerRecord]] = {}

    # -- DriverEvents ----------------------------------------------------------

    @_never_raises
    def peers_programmed(
        self,
        network_id: str,
        snapshot: Snapshot,
        local_vtep: IPAddress | None,
        *,
        added: int,
        removed: int,
        recheck: bool,
    ) -> None:
        now = self._clock()
        for table in ("fdb", "neighbour"):
            if added:
                self.entries.labels(table, "add").inc(added)
            if removed:
                self.entries.labels(table, "remove").inc(removed)
        if recheck and (added or removed):
            self.repairs.labels("peer_entries").inc(added + removed)
        lags = []
        with self._lock:
            if not self._pending:
                return
            for eid, rec in snapshot.items():
                seen = self._pending.get((network_id, eid))
                # Only the very record the event carried: a snapshot copied before the
                # event came would claim a convergence that has not happened yet.
                if seen is None or seen[1] != rec:
                    continue
                del self._pending[(network_id, eid)]
                if rec.vtep != local_vtep:
                    lags.append(now - seen[0])
        for lag in lags:
            self.lag.observe(max(lag, 0.0))

    @_never_raises
    def keys_rotated(self, trigger: str) -> None:
        self.rotations.labels(trigger).inc()

    @_never_raises
    def ipsec_failed(self, what: str) -> None:
        self.ipsec_failures.labels(what).inc()

    # -- ControlPlaneEvents ------------------------------------------------------

    @_never_raises
    def etcd_reachable(self, reachable: bool) -> None:
        self._etcd.set(reachable)

    @_never_raises
    def watch_restarted(self) -> None:
        self.watch_restarts.inc()

    @_never_raises
    def record_changed(self, network_id: str, endpoint_id: str, record: PeerRecord | None) -> None:
        key = (network_id, endpoint_id)
        with self._lock:
            if record is None:
                self._pending.pop(key, None)
                return
            # A record changed twice before programming: its lag runs from the first.
            first = self._pending.get(key)
            when = first[0] if first is not None else self._clock()
            self._pending.pop(key, None)
            self._pending[key] = (when, record)
            while len(self._pending) > MAX_PENDING:
                del self._pending[next(iter(self._pending))]

    # -- start-up --------------------------------------------------------------

    @_never_raises
    def reconciled(self, changes: Iterable[str]) -> None:
        """The change lines of the start-up reconcile (driver and IPAM), counted by kind."""
        for line in changes:
            self.repairs.labels(classify(line)).inc()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def etcd_collector(self) -> Collector:
        return self._etcd


class _Outages:
    """etcd reachability and the seconds spent unreachable, the current outage included.

    Read at scrape time, so an outage still going on counts up between scrapes. Only
    outages this process saw begin count: the time before the first contact does not.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._reachable: bool | None = None  # None: no contact tried yet
        self._down_since: float | None = None
        self._down_total = 0.0
        self._outages = 0

    def set(self, reachable: bool) -> None:
        now = self._clock()
        with self._lock:
            if reachable and self._down_since is not None:
                self._down_total += now - self._down_since
                self._down_since = None
            elif not reachable and self._down_since is None:
                self._down_since = now
                self._outages += 1
            self._reachable = reachable

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        with self._lock:
            reachable = self._reachable
            total = self._down_total + (now - self._down_since if self._down_since else 0.0)
            outages = self._outages
        up = GaugeMetricFamily(
            "swarmnet_etcd_reachable",
            "1 when the control plane's last round reached etcd, else 0 (0 until the first "
            "round answers).",
        )
        up.add_metric([], 1.0 if reachable else 0.0)
        yield up
        seconds = CounterMetricFamily(
            "swarmnet_etcd_outage_seconds",
            "Seconds etcd was unreachable from this node, the outage in progress included.",
        )
        seconds.add_metric([], total)
        yield seconds
        count = CounterMetricFamily(
            "swarmnet_etcd_outages", "Times etcd became unreachable from this node."
        )
        count.add_metric([], float(outages))
        yield count
