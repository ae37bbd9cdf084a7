"""Plugin call latency: CreateEndpoint + Join + Leave + DeleteEndpoint cycles sent straight to
node 1's plugin socket, 1 and 16 at a time; p50, p99 and calls/s.

The calls go to the bench's own swarmnet network (a holder container keeps it on node 1), with
made-up endpoint IDs and addresses from .224 upwards (one per concurrent worker), so each cycle
does all the real work: a store write per call, a veth pair made in Join and removed in Leave,
the endpoint published to etcd and withdrawn (the other nodes program and remove it too).
Each worker keeps one HTTP/1.1 connection, as dockerd's plugin client does. Every endpoint
made is removed again, also after a failure.

Docker's overlay runs inside dockerd and has no socket, so these rows have no Docker column."""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import OURS, Context, LabError, Row, stats
from plugin.unixhttp import UnixHTTPConnection

CALLS = ("CreateEndpoint", "Join", "Leave", "DeleteEndpoint")
FIRST_HOST = 223  # hosts()[223] is .224 in a /24


class Client:
    """One persistent connection; ``call`` returns (seconds, reply) and raises on an error."""

    def __init__(self, path: Path) -> None:
        self.conn = UnixHTTPConnection(path, timeout=60)

    def call(self, method: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        data = json.dumps(body).encode()
        t0 = time.perf_counter()
        self.conn.request("POST", f"/NetworkDriver.{method}", body=data,
                          headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        dt = time.perf_counter() - t0
        reply: dict[str, Any] = json.loads(raw or b"{}")
        if resp.status != 200 or reply.get("Err"):
            raise LabError(f"{method}: HTTP {resp.status}: {raw[:300]!r}")
        return dt, reply

    def close(self) -> None:
        self.conn.close()


def _bodies(network_id: str, endpoint_id: str, address: str) -> dict[str, dict[str, Any]]:
    ids = {"NetworkID": network_id, "EndpointID": endpoint_id}
    opts: dict[str, list[str]] = {"com.docker.network.endpoint.exposedports": [],
                                  "com.docker.network.portmap": []}
    return {
        "CreateEndpoint": {**ids, "Interface": {"Address": address, "AddressIPv6": "",
                                                "MacAddress": ""}, "Options": opts},
        "Join": {**ids, "SandboxKey": f"/var/run/docker/netns/bench{endpoint_id[:8]}",
                 "Options": opts},
        "Leave": ids,
        "DeleteEndpoint": ids,
    }


def _worker(sock: Path, network_id: str, address: str, cycles: int,
            latencies: dict[str, list[float]], lock: threading.Lock) -> None:
    client = Client(sock)
    try:
        for _ in range(cycles):
            eid = secrets.token_hex(32)
            bodies = _bodies(network_id, eid, address)
            done: list[str] = []
            try:
                for method in CALLS:
                    dt, _reply = client.call(method, bodies[method])
                    done.append(method)
                    with lock:
                        latencies[method].append(dt * 1000)
            finally:
                if "CreateEndpoint" in done and "DeleteEndpoint" not in done:
                    _undo(sock, bodies)
    finally:
        client.close()


def _undo(sock: Path, bodies: dict[str, dict[str, Any]]) -> None:
    client = Client(sock)
    try:
        for method in ("Leave", "DeleteEndpoint"):
            with contextlib.suppress(LabError, OSError, http.client.HTTPException):
                client.call(method, bodies[method])
    finally:
        client.close()


def run_level(sock: Path, network_id: str, addresses: list[str], concurrency: int,
              cycles_per_worker: int) -> tuple[dict[str, list[float]], float]:
    latencies: dict[str, list[float]] = {m: [] for m in CALLS}
    lock = threading.Lock()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(_worker, sock, network_id, addresses[w], cycles_per_worker,
                               latencies, lock) for w in range(concurrency)]
    wall = time.perf_counter() - t0
    for f in futures:
        f.result()  # re-raise a worker's failure
    return latencies, wall


def measure(ctx: Context, levels: dict[int, int], node: int = 1) -> list[Row]:
    """``levels``: concurrency -> cycles per worker."""
    net = ctx.nets[OURS]
    sock = ctx.lab.node(node).plugin_socket(ctx.plugin)
    hosts = list(net.subnet.hosts())
    addresses = [f"{hosts[FIRST_HOST + w]}/{net.subnet.prefixlen}" for w in range(max(levels))]
    run_level(sock, net.id, addresses, 1, 3)  # warm-up
    rows = []
    for concurrency, cycles in levels.items():
        row = Row(f"plugin_calls_c{concurrency}",
                  f"plugin call latency, {concurrency} at a time (node {node} socket)", "ms",
                  docker=None)
        if concurrency == 16:
            row.target = "p99 < 10 ms"
        try:
            latencies, wall = run_level(sock, net.id, addresses, concurrency, cycles)
        except (LabError, OSError, http.client.HTTPException) as e:
            row.failures.append(str(e))
            rows.append(row)
            continue
        every = [v for m in CALLS for v in latencies[m]]
        row.ours = every
        s = stats(every)
        rate = len(every) / wall
        row.extra = {"p50": s["median"], "p99": s["p99"], "calls_per_s": rate, "wall_s": wall,
                     "cycles": concurrency * cycles,
                     "per_call": {m: stats(latencies[m]) for m in CALLS}}
        row.note = f"p50 {s['median']:.1f} ms, p99 {s['p99']:.1f} ms, {rate:.0f} calls/s"
        rows.append(row)
    return rows
