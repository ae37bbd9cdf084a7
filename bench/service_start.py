"""Service start: ``docker service create --replicas 6`` on the manager until all 6 tasks are
Running (swarm's task state, read from the manager's API every 0.1 s), both drivers
alternating. The tasks spread over the 3 nodes. ``--endpoint-mode dnsrr``: the lab's kernel has
no IPVS, so a VIP would only log errors; both drivers get the same mode. Each service is
removed, and its containers are gone, before the next run starts."""

from __future__ import annotations

import time

from bench.common import IMAGE, Context, LabError, Row, alternate, log, remove_services
from bench.common import service_tasks as tasks_of

REPLICAS = 6
FAILED = {"failed", "rejected", "orphaned", "remove", "shutdown"}


def measure(ctx: Context, runs: int, timeout: float = 180) -> list[Row]:
    row = Row("service_start", f"service start, {REPLICAS} replicas to Running", "s")
    manager = ctx.lab.manager()
    for r in range(runs):
        for label in alternate(r, ctx.order):
            net = ctx.nets[label]
            svc = f"{net.name}-s{r}"
            t0 = time.perf_counter()
            manager.docker("service", "create", "--detach", "--no-resolve-image", "--name", svc,
                           "--network", net.name, "--replicas", str(REPLICAS),
                           "--endpoint-mode", "dnsrr", IMAGE, "sleep", "1d", timeout=120)
            try:
                row.add(label, _wait_running(ctx, svc, t0, timeout))
            except LabError as e:
                row.failures.append(f"{label} run {r}: {e}")
            remove_services(ctx.lab, svc)
        log(f"service start round {r + 1}/{runs} done")
    return [row]


def _wait_running(ctx: Context, svc: str, t0: float, timeout: float) -> float:
    while True:
        tasks = tasks_of(ctx.lab, svc)
        running = [t for t in tasks
                   if t.get("DesiredState") == "running" and t["Status"]["State"] == "running"]
        if len(running) >= REPLICAS:
            return time.perf_counter() - t0
        bad = [t["Status"].get("Err") or t["Status"]["State"] for t in tasks
               if t["Status"]["State"] in FAILED]
        if bad:
            raise LabError(f"{svc}: task failed: {bad[0]}")
        if time.perf_counter() - t0 > timeout:
            states = sorted(t["Status"]["State"] for t in tasks)
            raise LabError(f"{svc}: not all Running after {timeout:g}s: {states}")
        time.sleep(0.1)
