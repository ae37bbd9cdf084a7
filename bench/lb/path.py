"""Part 1, ``path``: connect plus the first byte through a VIP and to a backend directly.

A client and three backends on a bridge (10.99.0.0/24). Each backend accepts TCP on PORT and
sends one byte, its number. The client's namespace is programmed by the real
``NetlinkLoadBalancer`` with one VIP over the three; the client times connect() plus the first
byte, to VIP:PORT and to a backend's own address (in turn, as round robin does), in
alternating batches (ABBA) so drift hits both alike.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict
from typing import Any

from bench.lb.pathlab import BACKEND_IPS, CLIENT_IP, DIRECT_IP, Conn, PathLab
from bench.lb.scratch import Scratch
from bench.lb.stats import summary
from driver.kernel.lb import NetlinkLoadBalancer
from driver.lb.model import mark, sandbox_state, virtual_service

VIP = ipaddress.IPv4Address("10.99.0.100")
SLOW_US = 500_000  # a connection this slow lost a SYN (TCP retransmits it after 1 s)


def bench_path(
    scratch: Scratch, connections: int, batches: int, direct_source: str
) -> dict[str, Any]:
    """``direct_source`` "own": direct connections leave from the client's second address,
    so they never share a 4-tuple with a VIP connection; "same": both leave from one
    address (see docs/benchmarks.md, why that costs the VIP a lost SYN now and then)."""
    lab = PathLab(scratch)  # its namespaces are the scratch's to remove
    try:
        lb = NetlinkLoadBalancer()
        lb.program(
            lab.client,
            sandbox_state([virtual_service(VIP, mark(1), dict.fromkeys(BACKEND_IPS, 1))]),
        )
        per_batch = max(1, connections // batches)
        sources = {"vip": CLIENT_IP, "direct": DIRECT_IP if direct_source == "own" else CLIENT_IP}
        targets = {
            "vip": [VIP] * per_batch,
            "direct": [BACKEND_IPS[i % len(BACKEND_IPS)] for i in range(per_batch)],
        }
        # Warm-up, not counted: ARP, the first IPVS connection, Python's own first calls.
        lab.connect_batch([VIP] * 6, sources["vip"])
        lab.connect_batch(list(BACKEND_IPS) * 2, sources["direct"])
        conns: dict[str, list[Conn]] = {"vip": [], "direct": []}
        order = []
        for b in range(batches):
            # ABBA: the kind that goes first swaps every batch.
            kinds = ("vip", "direct") if b % 2 == 0 else ("direct", "vip")
            order.append(kinds[0])
            for kind in kinds:
                conns[kind] += lab.connect_batch(targets[kind], sources[kind])
    finally:
        lab.close()
    samples = {k: [c.us for c in v if c.us is not None and c.tag] for k, v in conns.items()}
    vip, direct = summary(samples["vip"]), summary(samples["direct"])
    spread: dict[str, int] = {}
    for c in conns["vip"]:
        if c.tag:
            spread[c.tag] = spread.get(c.tag, 0) + 1
    # A port that an earlier connection of the other kind used (its conntrack entry and the
    # server's TIME_WAIT socket outlive it): what a lost SYN had in common, if anything.
    used: dict[str, set[int]] = {"vip": set(), "direct": set()}
    slow: dict[str, list[dict[str, Any]]] = {"vip": [], "direct": []}
    for i in range(max(len(v) for v in conns.values())):
        for kind in ("vip", "direct"):
            if i >= len(conns[kind]):
                continue
            c = conns[kind][i]
            other = "direct" if kind == "vip" else "vip"
            if c.us is None or not c.tag or c.us >= SLOW_US:
                slow[kind].append(
                    asdict(c) | {"index": i, "port_used_before_by_" + other: c.sport in used[other]}
                )
            used[kind].add(c.sport)
    return {
        "connections_each": per_batch * batches,
        "batches": batches,
        "first_in_batch": order,
        "direct_source": direct_source,
        "sources": {k: str(v) for k, v in sources.items()},
        "vip_us": vip,
        "direct_us": direct,
        "ratio_p50": vip["p50"] / direct["p50"],
        "ratio_p90": vip["p90"] / direct["p90"],
        "failures": {k: sum(1 for c in v if c.us is None or not c.tag) for k, v in conns.items()},
        "slow_over_500ms": {
            k: sum(1 for c in v if c.us and c.us >= SLOW_US) for k, v in conns.items()
        },
        "failed_or_slow": slow,
        "vip_backend_spread": dict(sorted(spread.items())),
        "samples_us": samples,
    }
