"""`make bench`: swarmnet-overlay side by side with Docker's built-in overlay (issue 6).

One invocation, one 3-node lab (testbed.multihost), both drivers measured alternately, metric by
metric; prints the table and writes JSON (and a Markdown copy of the table) to build/bench/.

    python -m bench.run                     # full run (about 20 minutes on a busy 2-core host)
    python -m bench.run --quick             # fewer runs, 60-endpoint scale test
    python -m bench.run --only attach,rtt   # a subset (see --help for the metric names)
    python -m bench.run --scale-n 150       # any count can be changed

Needs root and what the lab needs (docs/lab.md), plus iperf3. The plugin bundle is
build/plugin; when it is missing or older than the sources it is built first with `make plugin`
against node 1's dockerd. The lab is always removed at the end, even after a failure, unless
--keep is given (then remove it with `python -m testbed.multihost --workdir DIR down`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import attach, convergence_row, dataplane, memory, plugin_calls, scale, service_start
from bench.common import (
    DOCKER,
    OURS,
    ROOT,
    Context,
    Driver,
    Lab,
    LabError,
    Net,
    Row,
    create_network,
    log,
    machine,
    remove_network,
    start_holders,
    stats,
    step,
)

METRICS = ("memory", "attach", "service", "convergence", "rtt", "tcp", "calls", "scale")

FULL = {"attach_runs": 10, "service_runs": 5, "convergence_runs": 10, "ping_rounds": 10,
        "iperf_rounds": 3, "calls_c1": 100, "calls_c16": 15, "scale_n": 300, "scale_runs": 1}
QUICK = {"attach_runs": 5, "service_runs": 2, "convergence_runs": 4, "ping_rounds": 3,
         "iperf_rounds": 1, "calls_c1": 25, "calls_c16": 4, "scale_n": 60, "scale_runs": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer runs: " + ", ".join(
        f"{k}={v}" for k, v in QUICK.items()))
    for key, full in FULL.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                       help=f"(full {full}, quick {QUICK[key]})")
    p.add_argument("--iperf-seconds", type=int, default=10)
    p.add_argument("--scale-timeout", type=float, default=600,
                   help="seconds a scale run may take until all are reachable")
    p.add_argument("--arp-retrans-ms", type=int, default=10)
    p.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(METRICS))
    p.add_argument("--skip", default="", help="comma-separated metrics to leave out")
    p.add_argument("--plugin", type=Path, default=ROOT / "build" / "plugin",
                   help="managed plugin bundle (config.json + rootfs/)")
    p.add_argument("--plugin-name", default="swarmnet-overlay:latest")
    p.add_argument("--no-build", action="store_true",
                   help="use --plugin as it is, even if older than the sources")
    p.add_argument("--ours-ipam", choices=("plugin", "default"), default="plugin",
                   help="our networks use the plugin's own IPAM (default) or Docker's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="plugin setting (repeatable)")
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / "lab")
    p.add_argument("--name", default="bench6", help="lab name (namespaces snlab-NAME-*)")
    p.add_argument("--existing", action="store_true",
                   help="use the lab already up in --workdir (plugin installed); leave it up")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "bench.json")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    chosen = [m.strip() for m in args.only.split(",") if m.strip()] or list(METRICS)
    skipped = {m.strip() for m in args.skip.split(",") if m.strip()}
    unknown = (set(chosen) | skipped) - set(METRICS)
    if unknown:
        p.error(f"unknown metric(s) {sorted(unknown)}; choose from {', '.join(METRICS)}")
    args.metrics = [m for m in METRICS if m in chosen and m not in skipped]
    return args


# --------------------------------------------------------------------------- targets


def evaluate(row: Row) -> None:
    """Issue 6's targets, where a row has one."""
    if not row.ours or (row.docker is not None and not row.docker):
        return
    ours = stats(row.ours)
    ratio = row.ratio("median")
    if row.key.startswith("attach_") and ratio is not None:
        row.met = ratio <= 1.05
    elif row.key == "rtt" and ratio is not None:
        row.met = ratio <= 1.03
    elif row.key == "tcp" and ratio is not None:
        row.met = ratio >= 0.97
    elif row.key == "convergence" and row.docker:
        row.met = ours["p90"] <= stats(row.docker)["p90"]
    elif row.key == "plugin_calls_c16":
        row.met = ours["p99"] < 10
    elif row.key.startswith("rss_"):
        row.met = ours["max"] < 80


# --------------------------------------------------------------------------- output


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _cells(row: Row) -> list[str]:
    o = stats(row.ours)
    d = stats(row.docker) if row.docker is not None else None
    ratio = row.ratio("median")
    return [row.metric, row.unit, fmt(o.get("median")), fmt(o.get("p90")),
            "n/a" if d is None else fmt(d.get("median")),
            "n/a" if d is None else fmt(d.get("p90")),
            "-" if ratio is None else f"{ratio:.2f}",
            row.target or "", {True: "yes", False: "NO", None: ""}[row.met],
            f"{o.get('n', 0)}/{'-' if d is None else d.get('n', 0)}"]


HEADER = ["metric", "unit", "ours med", "ours p90", "Docker med", "Docker p90",
          "ratio", "target", "met", "n"]


def table(rows: list[Row]) -> str:
    cells = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    for k, c in enumerate(cells):
        lines.append("  ".join(v.ljust(widths[i]) if i in (0, 1, 7) else v.rjust(widths[i])
                               for i, v in enumerate(c)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.metric.strip()}: {r.note}" for r in rows if r.note]
    fails = [f"  {r.metric.strip()}: {f}" for r in rows for f in r.failures]
    if notes:
        lines += ["", "notes:", *notes]
    if fails:
        lines += ["", "FAILURES:", *fails]
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(
        "---" if i in (0, 1, 7) else "---:" for i in range(len(HEADER))) + "|"]
    for r in rows:
        c = _cells(r)
        if c[0].startswith("  "):
            c[0] = "… " + c[0].strip()
        out.append("| " + " | ".join(c) + " |")
    return "\n".join(out)


def write(args: argparse.Namespace, report: dict[str, Any], rows: list[Row]) -> None:
    report["rows"] = [r.to_json() for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows) + "\n")


# --------------------------------------------------------------------------- the run


def build_plugin(lab: Lab, args: argparse.Namespace) -> None:
    if args.no_build or args.plugin.resolve() != (ROOT / "build" / "plugin").resolve():
        return
    env = {**os.environ, "DOCKER_HOST": f"unix://{lab.node(1).socket}"}
    if subprocess.run(["make", "-C", str(ROOT), "-q", "plugin"], env=env,
                      capture_output=True).returncode == 0:
        return
    with step("make plugin (build/plugin is missing or stale), with node 1's dockerd"):
        subprocess.run(["make", "-C", str(ROOT), "plugin"], env=env, check=True, timeout=1800)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()
    started = time.time()
    ours = Driver(OURS, args.plugin_name, args.plugin_name if args.ours_ipam == "plugin" else None)
    docker = Driver(DOCKER, "overlay", None)
    report: dict[str, Any] = {
        "benchmark": "swarmnet-overlay vs Docker overlay (issue 6)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
        "loadavg_start": load, "quick": args.quick, "metrics": args.metrics,
        "settings": {k: getattr(args, k) for k in (*FULL, "iperf_seconds", "arp_retrans_ms",
                                                   "scale_timeout", "ours_ipam")},
        "drivers": {OURS: dataclasses.asdict(ours), DOCKER: dataclasses.asdict(docker)},
    }
    log(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"metrics: {', '.join(args.metrics)}")
    rows: list[Row] = []
    lab = Lab.from_state(args.workdir) if args.existing else Lab(3, args.workdir, name=args.name)
    status = 0
    try:
        if not args.existing:
            with step("lab up (3 nodes, 1 manager)"):
                lab.up()
            build_plugin(lab, args)
            with step(f"install {args.plugin_name} on every node"):
                lab.install_plugin(args.plugin, args.plugin_name,
                                   dict(kv.split("=", 1) for kv in args.set))
        status = run_metrics(lab, args, ours, docker, rows, report)
    except BaseException as e:
        report["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        status = 1
    finally:
        report["duration_s"] = round(time.time() - started, 1)
        for row in rows:
            evaluate(row)
        write(args, report, rows)
        if not (args.existing or args.keep):
            with step("lab down"):
                lab.down()
            left = {k: v for k, v in lab.leftovers().items() if v}
            if left:
                log(f"LEFT OVER after lab down: {left}")
                status = 1
    load_end = os.getloadavg()
    print(f"\nswarmnet-overlay ({args.plugin_name}, IPAM: {ours.ipam or 'Docker default'}) vs "
          f"Docker overlay; {'quick' if args.quick else 'full'} run, "
          f"{report['duration_s']:.0f} s; load average {load[0]:.2f} at start, "
          f"{load_end[0]:.2f} at end; ratio = ours / Docker's (median)\n")
    print(table(rows))
    print(f"\nwritten to {args.out} and {args.out.with_suffix('.md')}")
    return status or (1 if any(r.failures for r in rows) else 0)


def run_metrics(lab: Lab, args: argparse.Namespace, ours: Driver, docker: Driver,
                rows: list[Row], report: dict[str, Any]) -> int:
    ctx = Context(lab, {}, args.plugin_name, args.quick)

    def record(name: str, fn: Callable[[], list[Row]]) -> None:
        with step(name):
            new = fn()
        for row in new:
            evaluate(row)
        rows.extend(new)
        write(args, report, rows)

    if "memory" in args.metrics:
        time.sleep(5)  # let the plugin settle after enable
        record("memory, idle", lambda: memory.measure(ctx, "idle"))
    base = ipaddress.IPv4Network("10.213.0.0/16")
    subnets = list(base.subnets(new_prefix=24))
    main_nets = [Net(ours, "bench-sn", subnets[1]), Net(docker, "bench-ov", subnets[2])]
    try:
        with step("networks and holder containers on every node"):
            for net in main_nets:
                create_network(lab, net)
                start_holders(lab, net, [n.index for n in lab.nodes])
                ctx.nets[net.label] = net
        if "attach" in args.metrics:
            record("attach latency", lambda: attach.measure(ctx, args.attach_runs))
        if "service" in args.metrics:
            record("service start", lambda: service_start.measure(ctx, args.service_runs))
        if "convergence" in args.metrics:
            record("convergence", lambda: convergence_row.measure(ctx, args.convergence_runs,
                                                                  args.arp_retrans_ms))
        if "rtt" in args.metrics:
            record("ping RTT", lambda: dataplane.measure_ping(ctx, args.ping_rounds))
        if "tcp" in args.metrics:
            record("TCP throughput", lambda: dataplane.measure_iperf(ctx, args.iperf_rounds,
                                                                     args.iperf_seconds))
        if "calls" in args.metrics:
            record("plugin calls", lambda: plugin_calls.measure(
                ctx, {1: args.calls_c1, 16: args.calls_c16}))
    finally:
        with step("remove the bench networks"):
            for net in main_nets:
                remove_network(lab, net.name)
    if "scale" in args.metrics:
        after_rows: list[Row] = []
        if "memory" in args.metrics:
            def after_scale(label: str) -> None:
                if label == OURS:
                    after_rows.extend(memory.measure(ctx, "after_scale"))
            ctx.settings["after_scale"] = after_scale
        record(f"scale ({args.scale_n} endpoints)", lambda: scale.measure(
            ctx, args.scale_n, args.scale_runs, ipaddress.IPv4Network("10.214.0.0/16"),
            args.scale_timeout, args.arp_retrans_ms))
        rows.extend(after_rows)
        if "memory" in args.metrics:
            time.sleep(5)
            record("memory, after scale and cleanup", lambda: memory.measure(ctx, "after_cleanup"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
