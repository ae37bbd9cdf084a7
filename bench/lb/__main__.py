"""Service VIP load balancing (issue 10): the data path through a VIP, the programming
delay, and the cost of many services. See docs/benchmarks.md, "Service VIP load balancing".

Needs IPVS, which this machine's kernel lacks, so it runs as root inside kernel-lab
(``make bench-lb`` does this)::

    KERNEL_LAB_QUIET=1 /work/shared/kernel-lab/run --timeout 1200 -- \\
        .venv/bin/python -m bench.lb

Three parts, each on namespaces this process makes in a scratch directory and removes:
``path`` (bench/lb/path.py), ``delay`` (bench/lb/delay.py) and ``scale``
(bench/lb/scale.py). Prints a table and writes JSON (default build/bench/lb.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.lb.delay import bench_delay
from bench.lb.path import bench_path
from bench.lb.report import environment, table
from bench.lb.scale import bench_scale
from bench.lb.scratch import Scratch
from driver.kernel.lb import NetlinkLoadBalancer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lb", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--only", default="path,delay,scale", help="comma-separated parts")
    parser.add_argument("--connections", type=int, default=1000, help="per kind (part 1)")
    parser.add_argument("--batches", type=int, default=10, help="batches per kind (part 1)")
    parser.add_argument(
        "--direct-source",
        choices=("own", "same"),
        default="own",
        help="direct connections from the client's second address (own) or the VIP's (same)",
    )
    parser.add_argument("--sandboxes", type=int, default=10, help="parts 2 and 3")
    parser.add_argument("--reps", type=int, default=20, help="per mode (part 2)")
    parser.add_argument("--services", type=int, default=50, help="part 3")
    parser.add_argument("--scale-repeats", type=int, default=3, help="changed/unchanged passes")
    parser.add_argument(
        "--quick", action="store_true", help="300 connections, 6 reps, 2 repeats (about 3 min)"
    )
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("build/bench/lb.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.batches = min(args.connections, 300), min(args.batches, 6)
        args.reps, args.scale_repeats = min(args.reps, 6), min(args.scale_repeats, 2)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"path", "delay", "scale"}
    if unknown:
        parser.error(f"unknown parts: {sorted(unknown)}")
    if os.geteuid() != 0:
        print("bench.lb needs root (run it under kernel-lab)", file=sys.stderr)
        return 2
    why = NetlinkLoadBalancer().unavailable()
    if why:
        print(f"bench.lb: {why}", file=sys.stderr)
        return 2

    result: dict[str, Any] = {
        "environment": environment(),
        "args": vars(args) | {"json": str(args.json)},
    }
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        scratch = Scratch(Path(tmp))
        try:
            if "path" in parts:
                result["path"] = bench_path(
                    scratch, args.connections, args.batches, args.direct_source
                )
                print(f"path: done ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
            if "delay" in parts:
                result["delay"] = bench_delay(scratch, args.sandboxes, args.reps, args.seed)
                print(f"delay: done ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
            if "scale" in parts:
                result["scale"] = bench_scale(
                    scratch, args.sandboxes, args.services, args.scale_repeats
                )
                print(f"scale: done ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
        finally:
            scratch.close()
    result["wall_s"] = time.perf_counter() - began
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    env = result["environment"]
    print(
        f"# Service VIP load balancing, {env['time_utc']} UTC, {env['hostname']}, kernel "
        f"{env['kernel']}, {env['cpus']} CPUs, {result['wall_s']:.0f} s"
    )
    print(table(result))
    print(f"JSON: {args.json}")
    failures = sum(result.get("path", {}).get("failures", {}).values())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
