"""Summaries of samples (nearest-rank percentiles, as bench/common.py) and this process's RSS."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.common import percentile
from testbed import proc


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def vm_rss_kib() -> int:
    found = proc.kib(Path("/proc/self/status"), "VmRSS")
    if found is None:
        raise RuntimeError("no VmRSS in /proc/self/status")
    return found
