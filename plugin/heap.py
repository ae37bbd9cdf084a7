"""Give the heap's free pages back to the kernel once a burst of work is over.

CPython returns what it frees to glibc's malloc, which keeps it: after a burst (a
300-task service: hundreds of endpoints, peer updates from etcd, veths reaped in the
background) the plugin would stay at its high-water mark for good. ``malloc_trim(0)``
hands every whole free page of every arena back. It holds the arena locks while it walks
them (milliseconds on a fragmented heap), so it runs when the process has gone quiet, not
during a burst. Quiet is read from the process's own CPU time, which counts every kind of
work: requests, etcd events, background threads. Where the C library has no
``malloc_trim`` (musl), nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Seconds between looks at the CPU time.
INTERVAL = 2.0
# CPU seconds used in one interval that make it busy; an idle plugin uses far less.
BUSY = 0.05


def malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the process's own symbols: its libc
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> int:
        return int(fn(0))

    return trim


class Trimmer:
    """Calls ``trim`` after the first quiet interval that follows a busy one."""

    def __init__(
        self,
        trim: Callable[[], int],
        interval: float = INTERVAL,
        busy: float = BUSY,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._trim = trim
        self._interval = interval
        self._busy = busy
        self._cpu = cpu
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swarmnet-heap", daemon=True)

    def start(self) -> Trimmer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        dirty = True  # start-up (imports, reconcile) was a burst too
        last = self._cpu()
        while not self._stop.wait(self._interval):
            now = self._cpu()
            if now - last >= self._busy:
                dirty = True
            elif dirty:
                self._trim()
                dirty = False
                now = self._cpu()  # the trim's own CPU time is no work
            last = now


def start_trimming() -> Trimmer | None:
    """A started Trimmer, or None where there is nothing to trim with."""
    trim = malloc_trim()
    if trim is None:
        log.info("no malloc_trim in this C library: freed memory stays with the process")
        return None
    return Trimmer(trim).start()
