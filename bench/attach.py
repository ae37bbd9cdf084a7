"""Container attach latency: wall time of ``docker run --rm --network NET busybox true``, on the
manager (node 1) and on a worker (node 2), both drivers alternating.

The network already exists on both nodes (a holder container runs there), so this is the
steady-state cost a container pays to join a network, plus everything else `docker run` does
(the same for both drivers; the ratio is what counts)."""

from __future__ import annotations

import time

from bench.common import IMAGE, Context, Row, alternate, log

NODES = {1: "manager", 2: "worker"}


def measure(ctx: Context, runs: int) -> list[Row]:
    rows = {i: Row(f"attach_{role}", f"container attach latency, {role} (node {i})", "ms",
                   target="ours <= 1.05 x Docker's (median)")
            for i, role in NODES.items()}
    for r in range(-1, runs):  # round -1 is a warm-up, not recorded
        for label in alternate(r, ctx.order):
            net = ctx.nets[label]
            for i, row in rows.items():
                name = f"{net.name}-a{i}"
                t0 = time.perf_counter()
                res = ctx.lab.node(i).docker("run", "--rm", "--name", name, "--network", net.name,
                                             IMAGE, "true", check=False, timeout=180)
                dt = (time.perf_counter() - t0) * 1000
                if res.returncode != 0:
                    row.failures.append(f"{label} run {r}: {res.stderr.strip()[:300]}")
                    ctx.lab.node(i).docker("rm", "-f", name, check=False)
                elif r >= 0:
                    row.add(label, dt)
        if r >= 0:
            log(f"attach round {r + 1}/{runs} done")
    return list(rows.values())
