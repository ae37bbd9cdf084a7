"""Node side: keep every local sandbox's load balancing equal to the records.

One thread owns all kernel work for load balancing, so no two calls ever program
one sandbox at once. Each pass:

1. reads the service records from the shared store. If that fails (an etcd
   outage), the pass stops there: what is programmed stays as it is, since an
   outage says nothing about the services;
2. reads the joined endpoints from the local store: sandbox key -> our networks;
3. programs every sandbox whose desired state differs from what it last got, and
   clears the sandboxes that left all of our networks.

Docker binds a sandbox's namespace file only after Join returns (in a prestart
hook), so a sandbox that is not an nsfs mount yet is retried every RETRY seconds,
up to ``sandbox_wait``; then it is given up until its desired state changes.

After a restart nothing is known of what the kernel holds: every joined sandbox is
programmed once, which converges without a gap (programming is a diff, not a flush).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.layout import StoreLayout
from driver import names
from driver.lb.desired import by_network, desired_states
from driver.lb.model import SandboxState, ServiceRecord
from driver.lb.port import LoadBalancer, SandboxGone
from driver.records import EndpointRecord, decode
from driver.store_port import KV

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between reads of the records when nothing wakes us
RETRY = 0.05  # seconds between looks at a sandbox whose namespace file is not bound yet
SANDBOX_WAIT = 60.0  # seconds a sandbox may take to appear before it is given up


def sandbox_locator(root: str) -> Callable[[str], Path]:
    """SandboxKey (a path in dockerd's exec root) -> the path the plugin sees it at.

    ``root`` is where the host's exec root is mounted in the plugin: the key's last
    component is looked up in ``root``/netns. Empty: the key is used as it is
    (``swarmnet serve`` on the host)."""
    if not root:
        return Path
    base = Path(root) / "netns"
    return lambda key: base / Path(key).name


@dataclass
class _Sandbox:
    key: str
    programmed: SandboxState | None = None  # None: unknown (never programmed by this process)
    waiting_since: float | None = None  # its namespace file was not there yet
    given_up: SandboxState | None = None  # gave up programming this state
    error: str = ""  # the last failure, logged once rather than at every pass


def read_records(shared: KV, layout: StoreLayout) -> list[ServiceRecord]:
    records = []
    for key, raw in shared.list(layout.lb_services).items():
        try:
            rec = ServiceRecord.from_json(raw)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("load balancing: ignoring unreadable record %s: %s", key, e)
            continue
        if rec is not None:
            records.append(rec)
    return records


def joined_sandboxes(local: KV, layout: StoreLayout) -> dict[str, set[str]]:
    """Sandbox key -> IDs of our networks it is joined to, from the endpoint records."""
    out: dict[str, set[str]] = {}
    for raw in local.list(layout.endpoints).values():
        ep = decode(EndpointRecord, raw)
        if ep.joined and ep.sandbox_key:
            out.setdefault(ep.sandbox_key, set()).add(ep.network_id)
    return out


class LoadBalancing:
    def __init__(
        self,
        lb: LoadBalancer,
        local: KV,
        shared: KV,
        locate: Callable[[str], Path] = Path,
        *,
        layout: StoreLayout,
        poll_interval: float = POLL_INTERVAL,
        sandbox_wait: float = SANDBOX_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lb = lb
        self.local = local
        self.shared = shared
        self.keys = layout
        self.locate = locate
        self.poll_interval = poll_interval
        self.sandbox_wait = sandbox_wait
        self.clock = clock
        self._sandboxes: dict[str, _Sandbox] = {}
        self._records: list[ServiceRecord] | None = None  # None: never read
        self._first_pass_done = False
        self._store_error: str = ""
        self._last_error: str = ""
        self._lock = threading.Lock()  # guards what status() reads
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="swarmnet-lb", daemon=True)
            self._thread.start()

    def nudge(self) -> None:
        """Something changed (a Join, a Leave): run a pass now rather than at the next poll."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                waiting = self.sync()
            except Exception as e:  # the thread must survive anything; the next pass retries
                log.exception("load balancing: pass failed")
                with self._lock:
                    self._last_error = f"{type(e).__name__}: {e}"[:300]
                waiting = False
            self._wake.wait(RETRY if waiting else self.poll_interval)
            self._wake.clear()

    # -- one pass --------------------------------------------------------------

    def sync(self) -> bool:
        """One pass. Returns True while a sandbox waits for its namespace file."""
        try:
            records = read_records(self.shared, self.keys)
        except Exception as e:
            with self._lock:
                if not self._store_error:
                    log.warning(
                        "load balancing: cannot read the service records (%s); "
                        "keeping what is programmed",
                        e,
                    )
                self._store_error = f"{type(e).__name__}: {e}"[:300]
            return False
        with self._lock:
            if self._store_error:
                log.info("load balancing: service records readable again")
            self._store_error = ""
            self._records = records
        joined = joined_sandboxes(self.local, self.keys)
        desired = desired_states(records, joined)
        now = self.clock()
        waiting = False
        for key, state in desired.items():
            sb = self._sandboxes.get(key)
            if sb is None:
                # A sandbox joined since the first pass is a new container: it holds
                # nothing of ours. One from before the first pass may hold what a
                # previous run programmed (a service removed while we were down).
                sb = self._sandboxes[key] = _Sandbox(key, () if self._first_pass_done else None)
            if sb.programmed == state or sb.given_up == state:
                continue
            if sb.given_up is not None:
                sb.given_up, sb.waiting_since = None, None  # a new state: try again
            waiting |= self._program(sb, state, now)
        for key in [k for k in self._sandboxes if k not in desired]:
            self._leave(self._sandboxes[key])
        self._first_pass_done = True
        return waiting

    def _program(self, sb: _Sandbox, state: SandboxState, now: float) -> bool:
        try:
            self.lb.program(self.locate(sb.key), state)
        except SandboxGone:
            if sb.waiting_since is None:
                sb.waiting_since = now
            if now - sb.waiting_since >= self.sandbox_wait:
                log.warning(
                    "load balancing: sandbox %s did not appear within %.0f s; giving up",
                    sb.key,
                    self.sandbox_wait,
                )
                sb.given_up, sb.waiting_since = state, None
                return False
            return True
        except Exception as e:
            message = f"sandbox {sb.key}: {e}"[:300]
            if message != sb.error:
                log.error("load balancing: %s (retrying at every pass)", message)
            with self._lock:
                self._last_error = sb.error = message
            return False
        if sb.programmed != state:
            log.info(
                "load balancing: sandbox %s: %d VIP(s), %d backend(s)",
                Path(sb.key).name[:12],
                len(state),
                sum(len(s.backends) for s in state),
            )
        if sb.error:
            log.info("load balancing: sandbox %s programmed after an error", sb.key)
        with self._lock:
            sb.programmed, sb.waiting_since, sb.error = state, None, ""
        return False

    def _leave(self, sb: _Sandbox) -> None:
        """The sandbox left all of our networks: take out what it holds of ours."""
        if sb.programmed:
            try:
                self.lb.clear(self.locate(sb.key))
            except Exception as e:
                log.warning("load balancing: clearing sandbox %s: %s", sb.key, e)
        with self._lock:
            del self._sandboxes[sb.key]

    # -- visibility ------------------------------------------------------------

    def status(self) -> Mapping[str, Any]:
        with self._lock:
            records = list(self._records or [])
            sandboxes = list(self._sandboxes.values())
            store_error, last_error = self._store_error, self._last_error
        joined = joined_sandboxes(self.local, self.keys)
        networks = []
        for network_id, recs in sorted(by_network(records).items()):
            mine = [sb for sb in sandboxes if network_id in joined.get(sb.key, ())]
            networks.append(
                {
                    "NetworkID": network_id,
                    "ShortID": names.short(network_id),
                    "Services": [
                        {
                            "ServiceID": r.service_id,
                            "Name": r.name,
                            "VIP": str(r.vip),
                            "FWMark": f"{r.fwmark:#x}",
                            "Backends": [{"IP": str(b.ip), "Weight": b.weight} for b in r.backends],
                        }
                        for r in sorted(recs, key=lambda r: (r.name, r.service_id))
                    ],
                    "SandboxesProgrammed": sum(
                        1 for sb in mine if sb.programmed is not None and sb.programmed
                    ),
                }
            )
        return {
            "State": "on",
            "Sandboxes": {
                "Programmed": sum(1 for sb in sandboxes if sb.programmed),
                "Waiting": sum(1 for sb in sandboxes if sb.waiting_since is not None),
                "GivenUp": sum(1 for sb in sandboxes if sb.given_up is not None),
            },
            "Store": "unreachable: " + store_error if store_error else "ok",
            "LastError": last_error,
            "Networks": networks,
        }
