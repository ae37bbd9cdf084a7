"""Cross-host convergence as a table row: bench/convergence.py's measurement (``docker run -d``
on node 2 until the first ping reply on node 1, ARP retransmit lowered in the pinging
namespace), run on the bench's networks, with node 1's holder container as the pinger.
Each run targets a fresh address from .100 of the network's subnet onwards."""

from __future__ import annotations

from bench.common import Context, Row, alternate, log
from bench.convergence import Result, measure_once


def measure(ctx: Context, runs: int, arp_retrans_ms: int = 10) -> list[Row]:
    row = Row("convergence", "cross-host convergence (docker run -d on node 2 -> first reply "
              "on node 1)", "ms", target="ours p90 <= Docker's p90")
    docker_run = Row("convergence_docker_run", "  of which `docker run -d` returns", "ms")
    results = {label: Result(net.driver.driver, net.name) for label, net in ctx.nets.items()}
    for r in range(runs):
        for label in alternate(r, ctx.order):
            net = ctx.nets[label]
            hosts = list(net.subnet.hosts())[99:]
            measure_once(ctx.lab.node(2), net.name, net.holders[1].pid, str(hosts[r % len(hosts)]),
                         arp_retrans_ms, results[label], r)
        log(f"convergence round {r + 1}/{runs} done")
    for label, res in results.items():
        for v in res.convergence:
            row.add(label, v * 1000)
        for v in res.docker_run:
            docker_run.add(label, v * 1000)
        row.failures += [f"{label}: {f}" for f in res.failures]
    row.extra["arp_retrans_ms"] = arp_retrans_ms
    return [row, docker_run]
