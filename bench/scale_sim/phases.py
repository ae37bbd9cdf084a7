"""The phases of one size: bootstrap, idle, probe joins, churn, node loss.

Every wait is bounded; a phase that runs out of time records what it saw and says so.
Lags use the wall clock (``time.time``), the same for every process on this machine.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from bench.common import log, percentile
from bench.scale_sim.cluster import Cluster, Endpoint, between, gc_between
from bench.scale_sim.hosts import HostError, Pending, call_all
from testbed.scalesim.node import TRACKED_OCTET


def wait_until(cond: Callable[[float], bool], timeout: float, every: float = 0.2) -> bool:
    """Until ``cond(seconds left)``, for at most ``timeout`` s (a host that does not answer
    within the time left counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond(max(1.0, deadline - time.monotonic())):
                return True
        except HostError as e:
            log(f"no answer in time: {e}")
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def lag_stats(lags: list[float]) -> dict[str, Any]:
    if not lags:
        return {"n": 0}
    return {"n": len(lags), "p50": percentile(lags, 50), "p99": percentile(lags, 99),
            "max": max(lags)}


def bootstrap(c: Cluster, ttl: int, timeout: float, max_rss: int = 0,
              resync: float | None = None, watch: bool = True) -> dict[str, Any]:
    """Every node publishes its endpoints; then every node starts watching (one list each),
    unless not ``watch``."""
    t0 = time.monotonic()
    build = [h.send({"op": "build", "url": c.etcd.url, "indices": c.indices(h), "ttl": ttl,
                     "networks": c.networks, "eps": c.eps_per_node, "resync": resync,
                     "relays": {i: c.relays_of(i) for i in c.indices(h)} if c.relays else {}})
             for h in c.hosts]
    for p in build:
        p.wait(timeout)
    want = c.nodes * c.eps_per_node
    left = max(5.0, timeout - (time.monotonic() - t0))
    published = wait_until(lambda _: c.peer_keys() >= want, left)
    t_published = time.monotonic() - t0
    c.load_endpoints()
    log(f"{c.nodes} nodes: {c.peer_keys()} of {want} records published in {t_published:.1f}s")
    before = c.sample()
    if not watch:
        return {"published": published, "publish_s": t_published, "converged": published,
                "watching": False, "watch_and_program_s": 0.0,
                "usage": between(before, c.sample(), c.nodes)}
    t1 = time.monotonic()
    call_all(c.hosts, {"op": "watch", "max_rss": max_rss}, max(10.0, timeout - (t1 - t0)))
    done = wait_until(lambda left: c.complete(left)[0] == c.nodes,
                      max(5.0, timeout - (time.monotonic() - t0)), every=1.0)
    t_watch = time.monotonic() - t1
    after = c.sample()
    log(f"{c.nodes} nodes: every node programmed every peer: {done} ({t_watch:.1f}s)")
    return {"published": published, "publish_s": t_published, "converged": done,
            "watch_and_program_s": t_watch, "usage": between(before, after, c.nodes)}


def idle(c: Cluster, seconds: float) -> dict[str, Any]:
    """Nothing but keep-alives: etcd's floor and the keep-alive traffic."""
    a = c.sample()
    time.sleep(seconds)
    b = c.sample()
    return between(a, b, c.nodes)


def measure_joins(c: Cluster, joined: list[Endpoint], timeout: float) -> dict[str, Any]:
    """Wait (bounded) until each endpoint is programmed on every other live node; its lag
    is the latest of those times less the time of its Join."""
    ips = [e.ip for e in joined]
    others = len(c.live_nodes()) - 1
    seen: dict[str, tuple[int, float]] = {}

    def all_there(left: float) -> bool:
        seen.update(c.added(ips, left))
        return all(seen[ip][0] >= others for ip in ips)

    # Each look walks every node's records in the hosts: rarely, not to load them more.
    everywhere = wait_until(all_there, timeout, every=2.0)
    lags = [seen[e.ip][1] - e.joined_at for e in joined if seen.get(e.ip, (0,))[0] >= others]
    out = lag_stats(lags)
    out["everywhere"] = everywhere
    out["not_everywhere"] = len(joined) - len(lags)
    return out


def probes(c: Cluster, count: int, gap: float, timeout: float) -> dict[str, Any]:
    """Joins one at a time on a quiet cluster, ``gap`` seconds apart."""
    a = c.sample()
    joined = []
    for _ in range(count):
        ep = c.new_tracked(c.rng.choice(c.live_nodes()))
        ep.joined_at = float(c.send_join(ep).wait(30)["at"])
        c.endpoints[ep.eid] = ep
        joined.append(ep)
        time.sleep(gap)
    out = measure_joins(c, joined, timeout)
    out["usage"] = between(a, c.sample(), c.nodes)
    return out


def churn(c: Cluster, rate: float, seconds: float, settle: float) -> dict[str, Any]:
    """``rate`` joins/s and ``rate`` leaves/s cluster-wide for ``seconds``: the joins are
    measured; the leaves take churn endpoints joined over 5 s ago first, else bootstrap ones."""
    a = c.sample()
    start = time.monotonic()
    joins: list[Endpoint] = []
    in_flight: collections.deque[tuple[Endpoint, Pending]] = collections.deque()
    churned: collections.deque[Endpoint] = collections.deque()  # joined, oldest first
    leaves: list[Pending] = []
    bootstrap = [e for e in c.endpoints.values()
                 if int(e.ip.split(".")[2]) < TRACKED_OCTET and e.node not in c.dead]
    c.rng.shuffle(bootstrap)
    n = 0
    while time.monotonic() - start < seconds:
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        n += 1
        ep = c.new_tracked(c.rng.choice(c.live_nodes()))
        in_flight.append((ep, c.send_join(ep)))
        c.endpoints[ep.eid] = ep
        joins.append(ep)
        while in_flight and in_flight[0][1].done():
            done, p = in_flight.popleft()
            done.joined_at = float(p.wait(1)["at"])
            churned.append(done)
        if churned and churned[0].joined_at < time.time() - 5:
            old: Endpoint | None = churned.popleft()
        else:
            old = bootstrap.pop() if bootstrap else None
        if old is not None:
            leaves.append(c.send_leave(old))
            del c.endpoints[old.eid]
    elapsed = max(time.monotonic() - start, 1e-6)
    for ep, p in in_flight:
        ep.joined_at = float(p.wait(180)["at"])
    for p in leaves:
        p.wait(180)
    b = c.sample()
    out = measure_joins(c, joins, settle)
    out["usage"] = between(a, b, c.nodes)
    # The last joins are programmed while measure_joins waits: a pause then is theirs too.
    out["gc"] = gc_between(a, c.sample())
    out["joins_per_s"] = n / elapsed
    out["leaves_per_s"] = len(leaves) / elapsed
    return out


def loss(c: Cluster, fraction: float, ttl: int, timeout: float) -> dict[str, Any]:
    """Kill ``fraction`` of the nodes without a hand-over: the time until etcd dropped their
    records (lease expiry) and until every live node dropped their entries."""
    count = max(1, round(c.nodes * fraction))
    step = c.nodes / count
    doomed = sorted({int(k * step) for k in range(count)})
    ips = [e.ip for e in c.endpoints.values() if e.node in set(doomed)]
    a = c.sample()
    per_host = {h.index: [i for i in doomed if i % len(c.hosts) == h.index] for h in c.hosts}
    pending = [h.send({"op": "kill", "nodes": per_host[h.index]}) for h in c.hosts]
    killed_at = min(float(p.wait(60)["at"]) for p in pending)
    c.dead |= set(doomed)
    for eid in [e.eid for e in c.endpoints.values() if e.node in set(doomed)]:
        del c.endpoints[eid]
    want = len(c.endpoints)
    etcd_done = wait_until(lambda _: c.peer_keys() <= want, ttl + timeout, every=0.1)
    etcd_s = time.time() - killed_at
    seen: dict[str, tuple[int, float]] = {}

    def all_gone(left: float) -> bool:
        seen.update(c.removed(ips, left))
        return all(seen[ip][0] == 0 for ip in ips)

    gone = wait_until(all_gone, timeout, every=1.0)
    b = c.sample()
    removal = max((t for _, t in seen.values()), default=0.0) - killed_at
    log(f"{c.nodes} nodes: killed {len(doomed)}; etcd dropped them after {etcd_s:.1f}s, "
        f"every node after {removal:.1f}s ({'all gone' if gone else 'NOT all gone'})")
    return {"killed": len(doomed), "entries": len(ips), "etcd_dropped_s": etcd_s,
            "etcd_dropped": etcd_done, "all_gone": gone, "removed_everywhere_s": removal,
            "held_still": sum(h for h, _ in seen.values()), "usage": between(a, b, c.nodes)}
