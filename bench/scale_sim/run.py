"""The command line and the run: a fresh etcd and fresh host processes per size, the phases,
then the JSON, the tables and the plot. Everything started is stopped on the way out."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import log, machine
from bench.scale_sim import phases, report
from bench.scale_sim.cluster import Cluster
from bench.scale_sim.hosts import HostProc, call_all
from testbed.etcdserver import etcd_server
from testbed.relay import relay_server

BUILD = Path("build/bench")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale_sim", description=__doc__)
    p.add_argument("--quick", action="store_true", help="sizes 10 and 100, shorter phases")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--procs", type=int, default=2, help="simulator processes (default 2)")
    p.add_argument("--networks", type=int, default=5)
    p.add_argument("--eps", type=int, default=10, help="endpoints per node")
    p.add_argument("--ttl", type=int, default=15, help="PEER_TTL (the plugin's default 15)")
    p.add_argument("--churn-rate", type=float, default=50.0, help="joins/s (and leaves/s)")
    p.add_argument("--churn-seconds", type=float)
    p.add_argument("--probes", type=int)
    p.add_argument("--idle-seconds", type=float)
    p.add_argument("--loss", type=float, default=0.1, help="share of nodes killed")
    p.add_argument("--budget", type=float, default=480.0,
                   help="bound on the bootstrap and every wait of one size (s)")
    p.add_argument("--settle", type=float, default=120.0,
                   help="bound on the wait for churn joins to reach every node (s)")
    p.add_argument("--max-rss-gib", type=float, default=12.0,
                   help="stop a size whose simulator processes grow past this, in all")
    p.add_argument("--relays", type=int, default=0,
                   help="watch relays (swarmnet relay) the nodes follow the peers through; "
                        "0: every node watches etcd (default)")
    p.add_argument("--resync", type=float,
                   help="the keeper's full-diff interval in s (the plugin's 30 s if not given)")
    p.add_argument("--gc", choices=("on", "freeze", "off"), default="on",
                   help="the simulator processes' cycle collector: on (Python's default), "
                        "freeze (gc.freeze() after the bootstrap) or off (no automatic "
                        "collection all run); testbed/scalesim/host.py says why")
    p.add_argument("--etcd-only", action="store_true",
                   help="with --relays: the nodes publish, keep their leases and churn, but do "
                        "not watch; etcd's side at a churn whose deliveries the simulator "
                        "cannot carry (through relays, etcd's load does not depend on how many "
                        "nodes follow them). No lag, probe or loss figures")
    p.add_argument("--label", default="", help="a name for this run in the JSON")
    p.add_argument("--out", type=Path, default=BUILD / "scale_sim.json")
    p.add_argument("--png", type=Path, default=Path("docs/scale-sim-lag.png"))
    p.add_argument("--no-png", action="store_true")
    p.add_argument("--seed", type=int, default=16)
    args = p.parse_args(argv)
    if args.etcd_only and not args.relays:
        p.error("--etcd-only needs --relays (without them nothing would watch etcd)")
    if args.sizes is None:
        args.sizes = [10, 100] if args.quick else [10, 100, 300, 1000]
    if args.churn_seconds is None:
        args.churn_seconds = 8.0 if args.quick else 20.0
    if args.idle_seconds is None:
        args.idle_seconds = 5.0 if args.quick else 10.0
    if args.probes is None:
        args.probes = 10 if args.quick else 20
    return args


@contextlib.contextmanager
def hosts(count: int, run_dir: Path) -> Iterator[list[HostProc]]:
    made: list[HostProc] = []
    try:
        for k in range(count):
            made.append(HostProc(k, run_dir / f"host{k}.log"))
        yield made
    finally:
        for h in made:
            h.stop()


def one_size(args: argparse.Namespace, nodes: int, run_dir: Path, out: dict[str, Any]) -> None:
    """The phases of one size, each result put into ``out`` as soon as it is known (a size
    that fails part-way keeps what it measured)."""
    rng = random.Random(args.seed + nodes)
    # quota: the default 2 GiB is ample; the data dir sits under build/, removed afterwards.
    with contextlib.ExitStack() as stack:
        etcd = stack.enter_context(etcd_server(parent=run_dir))
        relays = [stack.enter_context(relay_server(etcd.url, run_dir))
                  for _ in range(args.relays)]
        procs = stack.enter_context(hosts(args.procs, run_dir))
        assert etcd.process.pid
        c = Cluster(etcd, etcd.process.pid, procs, nodes, args.networks, args.eps, rng,
                    relays=relays)
        if args.gc == "off":
            call_all(c.hosts, {"op": "gc_off"}, 10)
        out["bootstrap"] = phases.bootstrap(c, args.ttl, args.budget,
                                            int(args.max_rss_gib * 2**30 / args.procs),
                                            args.resync, watch=not args.etcd_only)
        if not out["bootstrap"]["converged"]:
            log(f"{nodes} nodes: did not converge within the budget; skipping the rest")
            out["aborted"] = "bootstrap did not converge within the budget"
            return
        if args.gc == "freeze":
            out["gc_freeze"] = call_all(c.hosts, {"op": "gc_freeze"}, args.budget)
        out["idle"] = phases.idle(c, args.idle_seconds)
        if args.etcd_only:
            out["churn"] = phases.churn(c, args.churn_rate, args.churn_seconds, 0.0)
            log(f"{nodes} nodes: etcd-only churn, {out['churn']['joins_per_s']:.1f} joins/s")
            return
        out["probes"] = phases.probes(c, args.probes, 0.25, min(120.0, args.budget))
        log(f"{nodes} nodes: probe lag {report.lag_line(out['probes'])}")
        out["churn"] = phases.churn(c, args.churn_rate, args.churn_seconds,
                                    min(args.settle, args.budget))
        log(f"{nodes} nodes: churn lag {report.lag_line(out['churn'])}")
        out["loss"] = phases.loss(c, args.loss, args.ttl, min(120.0, args.budget))
        out["etcd_keys_end"] = c.peer_keys()


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so every `finally` stops what it started


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_term)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # etcd inherits it
    run_dir = BUILD / f"scale-sim-{os.getpid()}"
    result: dict[str, Any] = {
        "label": args.label,
        "command": " ".join([os.path.basename(sys.executable), "-m", "bench.scale_sim",
                             *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
        "sizes": [],
    }
    try:
        for nodes in args.sizes:
            t = time.monotonic()
            log(f"--- {nodes} nodes ---")
            out: dict[str, Any] = {"nodes": nodes}
            result["sizes"].append(out)
            try:
                one_size(args, nodes, run_dir, out)
            except Exception as e:
                log(f"{nodes} nodes: failed: {type(e).__name__}: {e}")
                out["aborted"] = f"{type(e).__name__}: {e}"
            result["sizes"][-1]["wall_s"] = time.monotonic() - t
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, default=str))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(report.tables(result))
    log(f"JSON: {args.out}")
    if not args.no_png:
        report.plot(result, args.png)
        log(f"plot: {args.png}")
