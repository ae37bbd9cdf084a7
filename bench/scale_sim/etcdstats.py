"""etcd's side of a run: its CPU and RSS from /proc, its counters from /metrics."""

from __future__ import annotations

import os
import re
import urllib.request
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")
_LINE = re.compile(r'^(\w+)(?:\{([^}]*)\})? ([0-9.eE+-]+)$')


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Metrics:
    db_size: float  # etcd_mvcc_db_total_size_in_bytes
    db_in_use: float  # etcd_mvcc_db_total_size_in_use_in_bytes
    requests: float  # gRPC calls handled (every gateway request is one), all methods
    by_method: dict[str, float]
    watchers: float  # etcd_debugging_mvcc_watcher_total
    keys: float  # etcd_debugging_mvcc_keys_total


def scrape(url: str, timeout: float = 10.0) -> Metrics:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    single: dict[str, float] = {}
    by_method: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "grpc_server_handled_total":
            method = re.search(r'grpc_method="(\w+)"', labels)
            if method:
                key = method.group(1)
                by_method[key] = by_method.get(key, 0.0) + value
        elif not labels:
            single[name] = value
    return Metrics(
        db_size=single.get("etcd_mvcc_db_total_size_in_bytes", 0.0),
        db_in_use=single.get("etcd_mvcc_db_total_size_in_use_in_bytes", 0.0),
        requests=sum(by_method.values()),
        by_method=by_method,
        watchers=single.get("etcd_debugging_mvcc_watcher_total", 0.0),
        keys=single.get("etcd_debugging_mvcc_keys_total", 0.0),
    )
