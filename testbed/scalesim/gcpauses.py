"""The garbage collector's pauses in a simulator process, from ``gc.callbacks``.

A collection holds the GIL from its start to its stop, so every simulated node in the
process stands still for that long: a long gen-2 collection shows up as lag in every
node at once. Kept per generation since ``install``: the count, the total and the
longest pause; and the last gen-2 pauses with their times, so a bench can find the
longest of a window between two samples.
"""

from __future__ import annotations

import collections
import gc
import time
from typing import Any

GENERATIONS = 3
GEN2_KEPT = 1024  # gen-2 collections are rare: at one a second, 17 minutes of them


class GcPauses:
    def __init__(self) -> None:
        self.count = [0] * GENERATIONS
        self.total = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        # (wall time at its end, seconds), oldest first
        self.gen2: collections.deque[tuple[float, float]] = collections.deque(maxlen=GEN2_KEPT)
        self._started = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Collections do not nest (the collector is not re-entered), and run with the GIL
        # held, so one start time and plain updates are enough.
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        gen = int(info["generation"])
        self.count[gen] += 1
        self.total[gen] += took
        self.longest[gen] = max(self.longest[gen], took)
        if gen == GENERATIONS - 1:
            self.gen2.append((time.time(), took))

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: per generation [count, total s, longest s] since ``install``, and the
        kept gen-2 pauses as [wall time at end, s]."""
        # Copied in one C call first: an allocation below may run a collection, whose
        # callback appends to the deque, which must not happen while iterating it.
        gen2 = list(self.gen2)
        return {
            "by_gen": [[self.count[g], self.total[g], self.longest[g]] for g in range(GENERATIONS)],
            "gen2_pauses": [list(p) for p in gen2],
        }
