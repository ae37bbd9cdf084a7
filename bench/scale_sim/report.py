"""The table per size on stdout, and the lag plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.scale_sim.png import lag_chart


def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def lag_line(lag: dict[str, Any]) -> str:
    if not lag.get("n"):
        return f"none measured ({lag.get('not_everywhere', 0)} not everywhere)"
    text = f"p50 {lag['p50']:.3f}s p99 {lag['p99']:.3f}s max {lag['max']:.3f}s (n={lag['n']})"
    if lag.get("not_everywhere"):
        text += f", {lag['not_everywhere']} NOT everywhere in time"
    return text


def gc_lines(u: dict[str, Any], window: str = "") -> list[str]:
    if "gc_s" not in u:
        return []  # a run from before GC pauses were measured
    return [f"   GC{window} {u['gc_s']:.2f}s in all ({u['gc_cores']:.3f} cores); gen-2 "
            f"{u['gc_gen2_count']}x, {u['gc_gen2_s']:.2f}s, longest {u['gc_gen2_max_s']:.2f}s"]


def table(size: dict[str, Any]) -> str:
    n = size["nodes"]
    lines = [f"== {n} nodes ==" + (f"  ABORTED: {size['aborted']}" if "aborted" in size else "")]
    boot = size.get("bootstrap")
    if boot:
        u = boot["usage"]
        lines.append(f"bootstrap: publish {boot['publish_s']:.1f}s, watch+program "
                     f"{boot['watch_and_program_s']:.1f}s (converged {boot['converged']}); "
                     f"etcd {u['etcd_cores']:.2f} cores, sim {u['sim_cores']:.2f} cores, "
                     f"sim RSS {u['sim_rss_mib']:.0f} MiB, threads {u['sim_threads']}")
        lines += gc_lines(u)
    freeze = size.get("gc_freeze")
    if freeze:
        lines.append("gc.freeze after bootstrap: "
                     + ", ".join(f"{h['frozen']} objects (collect {h['collect_s']:.2f}s)"
                                 for h in freeze))
    idle = size.get("idle")
    if idle:
        lines.append(f"idle:      etcd {idle['etcd_cores']:.3f} cores, "
                     f"{idle['etcd_requests_per_s']:.0f} req/s, RSS {idle['etcd_rss_mib']:.0f} "
                     f"MiB, db {idle['etcd_db_mib']:.1f} MiB;"
                     f" keep-alives {idle['keepalive_requests_per_s']:.1f} req/s "
                     f"{idle['keepalive_bytes_per_s'] / 1024:.1f} KiB/s "
                     f"({idle['keepalive_bytes_per_node_per_s']:.0f} B/s per node); "
                     f"sim {idle['sim_cores']:.2f} cores" + _relays(idle))
        lines += gc_lines(idle)
    if "probes" in size:
        lines.append(f"probe joins (quiet): {lag_line(size['probes'])}")
        lines += gc_lines(size["probes"].get("usage", {}))
    ch = size.get("churn")
    if ch:
        u = ch["usage"]
        lines.append(f"churn {ch['joins_per_s']:.0f} joins/s + {ch['leaves_per_s']:.0f} leaves/s:"
                     f" {lag_line(ch)}")
        lines.append(f"   etcd {u['etcd_cores']:.2f} cores, {u['etcd_requests_per_s']:.0f} req/s, "
                     f"RSS {u['etcd_rss_mib']:.0f} MiB, db {u['etcd_db_mib']:.1f} MiB; "
                     f"sim {u['sim_cores']:.2f} cores, {u['node_events_per_s']:.0f} node-events/s, "
                     f"client CPU {_f(u['client_cpu_us_per_node_event'], '.0f')} us per node "
                     f"per event" + _relays(u))
        if "gc" in ch:
            lines += gc_lines(ch["gc"], f" (churn and settle, {ch['gc']['gc_seconds']:.0f}s)")
    loss = size.get("loss")
    if loss:
        lines.append(f"loss of {loss['killed']} nodes ({loss['entries']} endpoints): etcd dropped "
                     f"them after {loss['etcd_dropped_s']:.1f}s, every live node after "
                     f"{loss['removed_everywhere_s']:.1f}s"
                     + ("" if loss["all_gone"] else f" (NOT all gone: {loss['held_still']} left)"))
        lines += gc_lines(loss["usage"])
    return "\n".join(lines)


def _relays(usage: dict[str, Any]) -> str:
    """The relays' share, when the nodes watched through relays; etcd's watcher count."""
    text = f"; etcd watchers {usage.get('etcd_watchers', 0):.0f}"
    if usage.get("relay_rss_mib"):
        text += (f"; relays {usage['relay_cores']:.2f} cores, "
                 f"RSS {usage['relay_rss_mib']:.0f} MiB")
    return text


def tables(result: dict[str, Any]) -> str:
    return "\n\n".join(table(s) for s in result["sizes"])


def plot(result: dict[str, Any], path: Path) -> None:
    sizes = [s for s in result["sizes"] if s.get("probes", {}).get("n")]
    if len(sizes) < 2:
        return
    nodes = [s["nodes"] for s in sizes]
    series = {k: [s["probes"][k] for s in sizes] for k in ("p50", "p99", "max")}
    counts = sorted({s["probes"]["n"] for s in sizes})
    lag_chart(path, nodes, series, "join -> programmed on every other node (s)",
              f"quiet cluster, {'/'.join(map(str, counts))} probe joins per size")


def merged(paths: list[Path]) -> dict[str, Any]:
    """The sizes of several runs' JSON in one result (a later file's size wins)."""
    by_size: dict[int, dict[str, Any]] = {}
    for p in paths:
        run = json.loads(p.read_text())
        for size in run["sizes"]:
            size = {**size, "command": run["command"]}
            if "probes" in size or size["nodes"] not in by_size:
                by_size[size["nodes"]] = size
    return {"sizes": [by_size[n] for n in sorted(by_size)]}


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.scale_sim.report RUN.json... [--png PATH]``: the tables and the plot
    of several runs together (each size from the last run that measured it)."""
    ap = argparse.ArgumentParser(prog="python -m bench.scale_sim.report")
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args(argv)
    result = merged(args.runs)
    print(tables(result))
    if args.png:
        plot(result, args.png)


if __name__ == "__main__":
    main()
