"""One simulated cluster of a given size against a fresh etcd, and the bookkeeping the
phases share: which node lives in which host process, which endpoints exist, and
snapshots of every counter (etcd's CPU, RSS and /metrics; the hosts' CPU, events, traffic).
"""

from __future__ import annotations

import base64
import json
import random
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.scale_sim import etcdstats
from bench.scale_sim.hosts import HostProc, call_all
from testbed import proc
from testbed.etcdserver import EtcdServer
from testbed.relay import RelayServer
from testbed.scalesim.node import LAYOUT, endpoint_id, tracked_ip


@dataclass(frozen=True)
class Sample:
    wall: float
    etcd_cpu: float
    etcd_rss: int
    metrics: etcdstats.Metrics
    hosts: list[dict[str, Any]]
    relay_cpu: float = 0.0  # all relays together
    relay_rss: int = 0

    @property
    def host_cpu(self) -> float:
        return sum(float(h["cpu"]) for h in self.hosts)

    @property
    def events(self) -> int:
        return sum(int(h["events"]) for h in self.hosts)

    def traffic(self, call: str) -> list[int]:
        rows = [h["traffic"].get(call, [0, 0, 0]) for h in self.hosts]
        return [sum(r[k] for r in rows) for k in range(3)]


def gc_between(a: Sample, b: Sample) -> dict[str, Any]:
    """The collectors' pauses from ``a`` to ``b`` in all hosts (testbed/scalesim/gcpauses):
    the time they took, and the gen-2 collections. Each host has its own GIL, so the
    longest gen-2 pause is the longest that any host's nodes all stood still."""
    dt = max(b.wall - a.wall, 1e-6)
    total, gen2_count, gen2_s, gen2_max = 0.0, 0, 0.0, 0.0
    for ha, hb in zip(a.hosts, b.hosts, strict=True):
        was, now = ha["gc"]["by_gen"], hb["gc"]["by_gen"]
        total += sum(now[g][1] - was[g][1] for g in range(len(now)))
        gen2_count += now[-1][0] - was[-1][0]
        gen2_s += now[-1][1] - was[-1][1]
        # A stats reply cannot come during a collection (it holds the GIL): a pause that
        # ended between the two replies was wholly between them.
        window = [s for end, s in hb["gc"]["gen2_pauses"] if ha["wall"] < end <= hb["wall"]]
        gen2_max = max([gen2_max, *window])
    return {"gc_seconds": dt, "gc_s": total, "gc_cores": total / dt,
            "gc_gen2_count": gen2_count, "gc_gen2_s": gen2_s, "gc_gen2_max_s": gen2_max}


def between(a: Sample, b: Sample, nodes: int) -> dict[str, Any]:
    """What happened from ``a`` to ``b``: rates and CPU shares."""
    dt = max(b.wall - a.wall, 1e-6)
    events = b.events - a.events
    host_cpu = b.host_cpu - a.host_cpu
    ka = [y - x for x, y in zip(a.traffic("lease/keepalive"), b.traffic("lease/keepalive"),
                                 strict=True)]
    calls = {c for h in b.hosts for c in h["traffic"]}
    all_bytes = sum(sum(b.traffic(c)[1:]) - sum(a.traffic(c)[1:]) for c in calls)
    all_reqs = sum(b.traffic(c)[0] - a.traffic(c)[0] for c in calls)
    methods = set(b.metrics.by_method)
    return {
        "seconds": dt,
        "etcd_cores": (b.etcd_cpu - a.etcd_cpu) / dt,
        "etcd_rss_mib": b.etcd_rss / 2**20,
        "etcd_db_mib": b.metrics.db_size / 2**20,
        "etcd_requests_per_s": (b.metrics.requests - a.metrics.requests) / dt,
        "etcd_requests_by_method_per_s": {
            m: (b.metrics.by_method.get(m, 0) - a.metrics.by_method.get(m, 0)) / dt
            for m in sorted(methods)
        },
        "relay_cores": (b.relay_cpu - a.relay_cpu) / dt,
        "relay_rss_mib": b.relay_rss / 2**20,
        "etcd_watchers": b.metrics.watchers,
        "sim_cores": host_cpu / dt,
        "sim_rss_mib": sum(h["rss"] for h in b.hosts) / 2**20,
        "sim_threads": sum(h["threads"] for h in b.hosts),
        "node_events": events,
        "node_events_per_s": events / dt,
        "client_cpu_us_per_node_event": 1e6 * host_cpu / events if events else None,
        "client_requests_per_s": all_reqs / dt,
        "client_bytes_per_s": all_bytes / dt,
        "keepalive_requests_per_s": ka[0] / dt,
        "keepalive_bytes_per_s": (ka[1] + ka[2]) / dt,
        "keepalive_bytes_per_node_per_s": (ka[1] + ka[2]) / dt / max(nodes, 1),
        **gc_between(a, b),
    }


@dataclass
class Endpoint:
    node: int
    net: int
    eid: str
    ip: str
    joined_at: float = 0.0


@dataclass
class Cluster:
    etcd: EtcdServer
    etcd_pid: int
    hosts: list[HostProc]
    nodes: int
    networks: int
    eps_per_node: int
    rng: random.Random
    relays: list[RelayServer] = field(default_factory=list)  # what nodes watch, if any
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # eid -> endpoint
    dead: set[int] = field(default_factory=set)
    _next_tracked: int = 0

    def host_of(self, node: int) -> HostProc:
        return self.hosts[node % len(self.hosts)]

    def indices(self, host: HostProc) -> list[int]:
        return [i for i in range(self.nodes) if i % len(self.hosts) == host.index]

    def sample(self, timeout: float = 180.0) -> Sample:
        hosts = call_all(self.hosts, {"op": "stats"}, timeout)
        return Sample(
            wall=time.time(),
            etcd_cpu=proc.cpu_seconds(self.etcd_pid),
            etcd_rss=proc.rss_bytes(self.etcd_pid),
            metrics=etcdstats.scrape(self.etcd.url),
            hosts=hosts,
            relay_cpu=sum(proc.cpu_seconds(r.process.pid) for r in self.relays),
            relay_rss=sum(proc.rss_bytes(r.process.pid) for r in self.relays),
        )

    def relays_of(self, node: int) -> list[str]:
        """The relays node ``node`` follows, in its order: spread evenly, each with the
        others as its fallbacks."""
        urls = [r.url for r in self.relays]
        k = node % len(urls) if urls else 0
        return urls[k:] + urls[:k]

    def peer_keys(self) -> int:
        """How many peer records etcd holds now (a count-only range)."""
        from plugin.store.etcd import b64, prefix_end

        body = json.dumps({"key": b64(LAYOUT.peers), "range_end": b64(prefix_end(LAYOUT.peers)),
                           "count_only": True}).encode()
        req = urllib.request.Request(f"{self.etcd.url}/v3/kv/range", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(json.loads(r.read()).get("count", 0))

    def live_nodes(self) -> list[int]:
        return [i for i in range(self.nodes) if i not in self.dead]

    def new_tracked(self, node: int) -> Endpoint:
        k = self._next_tracked
        self._next_tracked += 1
        net = self.rng.randrange(self.networks)
        return Endpoint(node, net, endpoint_id(node, 1_000_000 + k), str(tracked_ip(net, k)))

    def send_join(self, ep: Endpoint) -> Any:
        return self.host_of(ep.node).send(
            {"op": "join", "node": ep.node, "net": ep.net, "eid": ep.eid, "ip": ep.ip})

    def send_leave(self, ep: Endpoint) -> Any:
        return self.host_of(ep.node).send({"op": "leave", "node": ep.node, "eid": ep.eid})

    def load_endpoints(self) -> None:
        for h in self.hosts:
            rows = h.call({"op": "endpoints", "nodes": self.indices(h)}, 120)["endpoints"]
            for node, eid, ip in rows:
                self.endpoints[eid] = Endpoint(int(node), int(ip.split(".")[1]), eid, ip)

    def complete(self, timeout: float = 60.0) -> tuple[int, int]:
        """(live nodes holding every other live endpoint, live nodes)."""
        total = len(self.endpoints)
        replies = call_all(self.hosts, {"op": "status", "total": total}, timeout)
        return sum(r["complete"] for r in replies), sum(r["live"] for r in replies)

    def added(self, ips: list[str], timeout: float = 120.0) -> dict[str, tuple[int, float]]:
        """Per IP: (live nodes that programmed it, the latest time one did)."""
        return self._per_ip("added", ips, timeout)

    def removed(self, ips: list[str], timeout: float = 120.0) -> dict[str, tuple[int, float]]:
        """Per IP: (live nodes still holding it, the latest removal time seen)."""
        return self._per_ip("removed", ips, timeout)

    def _per_ip(self, op: str, ips: list[str], timeout: float) -> dict[str, tuple[int, float]]:
        """Every host's (count, latest time) per IP, summed and maxed."""
        out: dict[str, tuple[int, float]] = {ip: (0, 0.0) for ip in ips}
        for r in call_all(self.hosts, {"op": op, "ips": ips}, timeout):
            for ip, (count, latest) in r["ips"].items():
                c, t = out[ip]
                out[ip] = (c + int(count), max(t, float(latest)))
        return out


def decode_key(b64key: str) -> str:
    return base64.b64decode(b64key).decode()


def log_path(run_dir: Path, name: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir / name
