"""Cross-host convergence: time from `docker run -d` on node 2 until a container on node 1
gets its first ping reply from the new container.

    python bench/convergence.py --driver overlay                       # lab already up
    python bench/convergence.py --up --driver overlay --driver swarmnet-overlay:latest \
        --ipam swarmnet-overlay:latest=swarmnet-overlay:latest --runs 10

With several drivers the runs alternate (A, B, A, B, ...) in one invocation, so a noisy machine
affects them alike. Each driver gets its own attachable network with a fixed subnet; run k
starts its target at a fresh address, so no neighbour entry from an earlier run can help.

The pinger (testbed.prober) runs in the node-1 container's network namespace and sends an
ICMP echo every 2 ms. Its ARP retransmit time is lowered (default 10 ms) so that a miss before
the driver has programmed the peer costs milliseconds, not the kernel's default 1 s: the driver
is measured, not the ARP timer. Before each run it checks for 0.2 s that the address does not
answer yet.

Prints a table and writes JSON (default build/bench/convergence.json).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testbed.multihost import IMAGE, Lab, LabError, Node  # noqa: E402
from testbed.prober import Prober  # noqa: E402


@dataclass
class Result:
    driver: str
    network: str
    convergence: list[float] = field(default_factory=list)
    docker_run: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values), "p90": p90(values),
            "min": min(values), "max": max(values)}


def network_name(index: int, driver: str) -> str:
    return f"conv{index}-" + re.sub(r"[^a-z0-9]+", "-", driver.lower()).strip("-")[:40]


def setup_network(lab: Lab, index: int, driver: str, ipam: str | None,
                  subnet: ipaddress.IPv4Network) -> tuple[str, str, int]:
    """Create the network and the pinging container on node 1; return (network, pinger, pid)."""
    manager, node1, node2 = lab.manager(), lab.node(1), lab.node(2)
    net = network_name(index, driver)
    cleanup_network(lab, net)
    args = ["network", "create", "-d", driver, "--attachable", "--subnet", str(subnet)]
    if ipam:
        args += ["--ipam-driver", ipam]
    manager.docker(*args, net)
    pinger = f"{net}-pinger"
    node1.docker("run", "-d", "--name", pinger, "--network", net, IMAGE, "sleep", "1d")
    pid = int(node1.docker("inspect", "-f", "{{.State.Pid}}", pinger).stdout)
    # Warm node 2 up on this network (as a real worker would be), then leave it empty.
    node2.docker("run", "--rm", "--network", net, IMAGE, "true", timeout=120)
    return net, pinger, pid


def cleanup_network(lab: Lab, net: str) -> None:
    for node in lab.nodes:
        ids = node.docker("ps", "-aq", "--filter", f"name=^{net}-").stdout.split()
        if ids:
            node.docker("rm", "-f", *ids, check=False)
    deadline = time.monotonic() + 30
    manager = lab.manager()
    while manager.docker("network", "inspect", net, check=False).returncode == 0:
        manager.docker("network", "rm", net, check=False)
        if time.monotonic() > deadline:
            raise LabError(f"cannot remove network {net}")
        time.sleep(0.5)


def measure_once(node2: Node, net: str, pid: int, target: str, retrans_ms: int, result: Result,
                 run: int) -> None:
    name = f"{net}-target"
    node2.docker("rm", "-f", name, check=False)
    for _attempt in range(20):
        pinger = Prober(pid, [target], retrans_ms=retrans_ms, deadline=time.time() + 60.2,
                        interval=0.002, quiet=0.2)
        if pinger.ready():
            break
        time.sleep(0.5)  # the previous target's entries are still there: give them time
    else:
        raise LabError(f"{target} still answers before the run")
    t0 = time.time()
    started = node2.docker("run", "-d", "--name", name, "--network", net, "--ip", target,
                           IMAGE, "sleep", "1d", check=False, timeout=120)
    t_run = time.time() - t0
    probe = pinger.result(timeout=90)
    if started.returncode != 0:
        result.failures.append(f"run {run}: docker run failed: {started.stderr.strip()}")
    elif target in probe.first:
        result.convergence.append(probe.first[target] - t0)
        result.docker_run.append(t_run)
    else:
        result.failures.append(f"run {run}: no reply from {target} within 60 s")
    node2.docker("rm", "-f", name, check=False)


@contextlib.contextmanager
def lab_for(args: argparse.Namespace) -> Iterator[Lab]:
    if not args.up:
        yield Lab.from_state(args.workdir)
        return
    with tempfile.TemporaryDirectory(prefix="snlab-bench-") as tmp:
        lab = Lab(args.nodes, Path(tmp), name="bench")
        try:
            lab.up()
            if args.plugin:
                lab.install_plugin(args.plugin, args.plugin_name)
            yield lab
        finally:
            lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", action="append", help="network driver (repeatable); "
                        "default: overlay")
    parser.add_argument("--ipam", action="append", default=[], metavar="DRIVER=IPAM",
                        help="IPAM driver to use with DRIVER's network")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--arp-retrans-ms", type=int, default=10)
    parser.add_argument("--subnet-base", default="10.213.0.0/16",
                        help="each driver's network gets the next /24 of this")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get(
        "SNLAB_WORKDIR", "build/lab")), help="a running lab's directory (without --up)")
    parser.add_argument("--up", action="store_true", help="make a lab just for this run")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--plugin", type=Path, help="with --up: install this plugin build")
    parser.add_argument("--plugin-name", default="swarmnet-overlay:latest")
    parser.add_argument("--out", type=Path, default=Path("build/bench/convergence.json"))
    args = parser.parse_args(argv)
    drivers = args.driver or ["overlay"]
    ipams = dict(kv.split("=", 1) for kv in args.ipam)
    subnets = ipaddress.IPv4Network(args.subnet_base).subnets(new_prefix=24)
    load = os.getloadavg()

    with lab_for(args) as lab:
        if len(lab.nodes) < 2:
            raise LabError("the lab needs at least 2 nodes")
        results: list[Result] = []
        setups: list[tuple[str, int, list[ipaddress.IPv4Address]]] = []
        for index, driver in enumerate(drivers):
            subnet = next(subnets)
            net, _pinger, pid = setup_network(lab, index, driver, ipams.get(driver), subnet)
            hosts = list(subnet.hosts())[99:]  # .100 onwards: clear of what IPAM hands out
            setups.append((net, pid, hosts))
            results.append(Result(driver, net))
        try:
            for run in range(args.runs):
                for (net, pid, hosts), result in zip(setups, results, strict=True):
                    measure_once(lab.node(2), net, pid, str(hosts[run % len(hosts)]),
                                 args.arp_retrans_ms, result, run)
        finally:
            for net, _, _ in setups:
                cleanup_network(lab, net)

    report = {
        "benchmark": "convergence",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg_start": load, "runs": args.runs, "arp_retrans_ms": args.arp_retrans_ms,
        "results": [{"driver": r.driver, "network": r.network, "ipam": ipams.get(r.driver),
                     "convergence_s": summary(r.convergence),
                     "docker_run_s": summary(r.docker_run),
                     "samples_s": [round(v, 4) for v in r.convergence],
                     "failures": r.failures} for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"convergence: docker run -d on node2 -> first ping reply on node1 "
          f"({args.runs} runs, ARP retrans {args.arp_retrans_ms} ms, load {load[0]:.2f})")
    print(f"{'driver':<28} {'n':>3} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'max ms':>8}"
          f" {'docker run median ms':>21}")
    for r in results:
        s, d = summary(r.convergence), summary(r.docker_run)
        if s["n"]:
            print(f"{r.driver:<28} {s['n']:>3} {s['median'] * 1000:>10.0f} {s['p90'] * 1000:>8.0f}"
                  f" {s['min'] * 1000:>8.0f} {s['max'] * 1000:>8.0f}"
                  f" {d['median'] * 1000:>21.0f}")
        for failure in r.failures:
            print(f"  {r.driver}: {failure}")
    if len(results) == 2:
        a, b = (summary(r.convergence) for r in results)
        if a["n"] and b["n"]:
            print(f"ratio {drivers[0]} / {drivers[1]}: median {a['median'] / b['median']:.2f}, "
                  f"p90 {a['p90'] / b['p90']:.2f}")
    print(f"written to {args.out}")
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
