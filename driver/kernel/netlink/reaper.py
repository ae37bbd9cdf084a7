"""The reaper: deletes retired veths off the callers' path, a namespace's batch in one request.

Deleting a veth pair costs the kernel 15-20 ms (an RCU grace period), most of
it outside RTNL. Leave retires the pair instead (``Endpoints.retire_endpoint``);
this thread deletes every retired device of a namespace at once, so one grace
period covers a whole batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from driver import names

REAP_DELAY = 0.02  # seconds the reaper waits for more retirements to batch

log = logging.getLogger(__name__)


class Reaper:
    """A thread that runs ``reap(network_id)`` for networks with retired devices.

    Retirements that come within ``REAP_DELAY`` of each other share one call.
    """

    def __init__(self, reap: Callable[[str], None]) -> None:
        self._reap = reap
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._busy = False
        self._thread: threading.Thread | None = None

    def schedule(self, network_id: str) -> None:
        with self._cond:
            self._pending.add(network_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="swarmnet-reaper", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def drain(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                self._busy = True
            time.sleep(REAP_DELAY)
            with self._cond:
                batch, self._pending = self._pending, set()
            for network_id in sorted(batch):
                try:
                    self._reap(network_id)
                except Exception:
                    log.exception(
                        "network %s: deleting retired veths failed; the next start "
                        "or retirement tries again",
                        names.short(network_id),
                    )
            with self._cond:
                self._busy = bool(self._pending)
                self._cond.notify_all()

