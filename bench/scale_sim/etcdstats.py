"""etcd's side of a run: its counters from /metrics (its CPU and RSS: testbed.proc)."""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

_LINE = re.compile(r'^(\w+)(?:\{([^}]*)\})? ([0-9.eE+-]+)$')


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
