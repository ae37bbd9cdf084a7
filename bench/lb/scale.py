"""Part 3, ``scale``: S services of three backends on one network, N sandboxes joined to it.

``sync()`` from nothing, after one backend of one service changed, with nothing changed;
VmRSS before and after; what the kernel holds afterwards (``read()``); where one sandbox's
program() spends its time.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import IPVS

from bench.lb.scratch import Scratch
from bench.lb.services import LAYOUT, join_sandboxes, key, record
from bench.lb.stats import summary, vm_rss_kib
from driver.kernel import lb_ipvs, lb_nft, nsfs
from driver.kernel.lb import NetlinkLoadBalancer
from driver.lb.model import SandboxState, sandbox_state
from driver.lb.programmer import LoadBalancing
from plugin.store.memory import MemoryKV
from plugin.store.sqlite import SqliteKV

IP = ipaddress.IPv4Address


def bench_scale(scratch: Scratch, sandboxes: int, services: int, repeats: int) -> dict[str, Any]:
    local = SqliteKV(scratch.root / "scale-local.db")
    shared = MemoryKV()
    paths = join_sandboxes(scratch, local, "s", sandboxes)
    recs = [
        record(
            f"{i:025x}",
            IP(f"10.98.{i // 250}.{i % 250 + 1}"),
            i + 1,
            [IP(f"10.97.{i}.{j}") for j in (1, 2, 3)],
            name=f"svc{i}",
        )
        for i in range(services)
    ]
    for rec in recs:
        shared.put(key(rec), rec.to_json())
    lb = NetlinkLoadBalancer()
    rss_before = vm_rss_kib()
    programmer = LoadBalancing(lb, local, shared, layout=LAYOUT)
    try:
        start = time.perf_counter()
        programmer.sync()
        first = (time.perf_counter() - start) * 1000
        changed: list[float] = []
        unchanged: list[float] = []
        for rep in range(repeats):
            # One backend of one service replaced, then a pass with nothing new.
            rec = recs[0]
            moved = [IP(f"10.97.{services}.{rep + 1}"), *[b.ip for b in rec.backends[1:]]]
            recs[0] = record(rec.service_id, rec.vip, 1, moved, name=rec.name)
            shared.put(key(recs[0]), recs[0].to_json())
            start = time.perf_counter()
            programmer.sync()
            changed.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            programmer.sync()
            unchanged.append((time.perf_counter() - start) * 1000)
        rss_after = vm_rss_kib()
        states = [lb.read(p) for p in paths]
        wanted = sandbox_state([r.virtual_service() for r in recs])
        breakdown = program_breakdown(lb, paths[0], wanted, repeats)
    finally:
        local.close()
    return {
        "sandboxes": sandboxes,
        "services": services,
        "backends_per_service": 3,
        "first_pass_ms": first,
        "first_pass_per_sandbox_ms": first / sandboxes,
        "one_backend_changed_ms": summary(changed),
        "nothing_changed_ms": summary(unchanged),
        "rss_kib": {"before": rss_before, "after": rss_after, "growth": rss_after - rss_before},
        "ipvs_services_per_sandbox": sorted({len(s) for s in states}),
        "ipvs_destinations_per_sandbox": sorted(
            {sum(len(vs.backends) for vs in s) for s in states}
        ),
        "every_sandbox_as_wanted": all(s == wanted for s in states),
        "one_sandbox_ms": breakdown,
        "samples_ms": {"one_backend_changed": changed, "nothing_changed": unchanged},
    }


def program_breakdown(
    lb: NetlinkLoadBalancer, sandbox: Path, state: SandboxState, repeats: int
) -> dict[str, dict[str, float]]:
    """Where one program() of a sandbox holding ``state`` spends its time: the whole call
    with nothing to change, one IPVS dump (services and their destinations), one
    replacement of the nftables table (a fork of nft), one thread entering the namespace."""

    def ipvs_dump() -> None:
        with IPVS() as handle:
            lb_ipvs.read(handle)

    parts: dict[str, Callable[[], object]] = {
        "program_nothing_to_change": lambda: lb.program(sandbox, state),
        "ipvs_dump": lambda: nsfs.run_in(sandbox, ipvs_dump),
        "nft_table_replace": lambda: nsfs.run_in(sandbox, lambda: lb_nft.apply("nft", state)),
        "enter_namespace": lambda: nsfs.run_in(sandbox, lambda: None),
    }
    out = {}
    for name, call in parts.items():
        samples = []
        for _ in range(max(3, repeats)):
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1000)
        out[name] = summary(samples)
    return out
