"""`make bench-datapath` (issue 17): the data path alone, four configurations alternating in one
run on the 3-node lab, between a holder container on node 1 and one on node 2:

- ``ours``: a swarmnet network as the plugin makes it (tuned: driver/kernel/netlink/tuning.py);
- ``ours-plain``: a swarmnet network with ``-o swarmnet.tuning=off`` (the kernel's defaults,
  what the plugin made before issue 17), same plugin, same run;
- ``docker``: Docker's overlay;
- ``underlay``: node 1's namespace to node 2's address, no VXLAN (the ceiling).

Per round and configuration: iperf3 TCP (one stream), iperf3 UDP at 64-byte and 1,400-byte
payloads (unlimited rate, packets per second delivered), and 20 pings. The order rotates every
round and reverses every other one, so no configuration always follows the same one. Rows
compare samples with a Mann-Whitney U test and a bootstrap interval of the ratio of medians,
and round by round (the configurations of a round ran back to back) with Wilcoxon's
signed-rank test (bench/ranks.py): on this noisy machine the load moves between rounds more
than between neighbouring runs, so the paired test resolves smaller differences; ``--pool``
adds the samples of earlier runs' JSON files. Writes build/bench/datapath.{json,md,png}.

    python -m bench.datapath                    # 8 rounds
    python -m bench.datapath --rounds 4 --pool build/bench/datapath-1.json
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/datapath.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ranks
from bench.common import (
    DOCKER,
    OURS,
    ROOT,
    Driver,
    Lab,
    LabError,
    Net,
    create_network,
    log,
    machine,
    node_mount_exec,
    remove_network,
    start_holders,
    step,
)
from bench.datapath_plot import plot
from bench.dataplane import iperf3, ping_rtts

CONFIGS = ("ours", "ours-plain", "docker", "underlay")
METRICS = {  # key: (label, unit, higher is better)
    "tcp": ("TCP throughput, iperf3, 1 stream", "Gbit/s", True),
    "udp64": ("UDP 64-byte payloads, delivered", "kpps", True),
    "udp1400": ("UDP 1,400-byte payloads, delivered", "kpps", True),
    "rtt": ("ping RTT (all pings pooled)", "ms", False),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.datapath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--tcp-seconds", type=int, default=6)
    p.add_argument("--udp-seconds", type=int, default=3)
    p.add_argument("--pings", type=int, default=20, help="per round and configuration")
    p.add_argument("--only", default=",".join(METRICS), help="subset of " + ",".join(METRICS))
    p.add_argument("--pool", type=Path, action="append", default=[],
                   help="an earlier run's JSON whose samples are added (repeatable)")
    p.add_argument("--plugin", type=Path, default=ROOT / "build" / "plugin")
    p.add_argument("--plugin-name", default="swarmnet-overlay:latest")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / "lab-datapath")
    p.add_argument("--name", default="dpath")
    p.add_argument("--existing", action="store_true", help="the lab in --workdir is up")
    p.add_argument("--report-only", action="store_true",
                   help="no lab, no measuring: the table and plot of the --pool files")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "datapath.json")
    args = p.parse_args(argv)
    args.metrics = [m for m in METRICS if m in args.only.split(",")]
    return args


def _ends(lab: Lab, nets: dict[str, Net], config: str) -> tuple[int | str, int | str, str]:
    if config == "underlay":
        return lab.node(1).netns, lab.node(2).netns, str(lab.node(2).address)
    net = nets[config]
    return net.holders[1].pid, net.holders[2].pid, str(net.holders[2].ip)


def measure(lab: Lab, nets: dict[str, Net], config: str, metric: str,
            args: argparse.Namespace) -> list[float]:
    client, server, dst = _ends(lab, nets, config)
    if metric == "rtt":
        return ping_rtts(client, dst, args.pings)
    if metric == "tcp":
        res = iperf3(client, server, dst, args.tcp_seconds)
        return [res["end"]["sum_received"]["bits_per_second"] / 1e9]
    size = metric.removeprefix("udp")
    res = iperf3(client, server, dst, args.udp_seconds, ["-u", "-b", "0", "-l", size])
    got = res["end"]["sum_received"]
    return [(got["packets"] - got["lost_packets"]) / got["seconds"] / 1e3]


def order(round_: int) -> list[str]:
    k = round_ % len(CONFIGS)
    rotated = list(CONFIGS[k:] + CONFIGS[:k])
    return rotated if (round_ // len(CONFIGS)) % 2 == 0 else rotated[::-1]


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Per metric: each configuration's median, and ours against the others."""
    out: dict[str, Any] = {}
    for metric, by_config in samples.items():
        row: dict[str, Any] = {c: {"n": len(v), "median": statistics.median(v),
                                   "mean": statistics.fmean(v)}
                               for c, v in by_config.items() if v}
        ours = by_config.get("ours") or []
        for other in ("ours-plain", "docker", "underlay"):
            theirs = by_config.get(other) or []
            if len(ours) >= 2 and len(theirs) >= 2:
                row[f"ours_vs_{other}"] = ranks.compare(ours, theirs)
                if metric != "rtt" and len(ours) == len(theirs):
                    # One sample a round each (a failed sample would break the pairing).
                    wins, p = ranks.signed_rank(list(zip(ours, theirs, strict=True)))
                    per_round = [a / b for a, b in zip(ours, theirs, strict=True) if b]
                    row[f"ours_vs_{other}"].update(
                        paired_wins=wins, paired_p=p,
                        paired_median_ratio=statistics.median(per_round))
        if metric == "rtt" and by_config.get("underlay"):
            base = statistics.median(by_config["underlay"])
            row["overhead_ms"] = {c: statistics.median(v) - base
                                  for c, v in by_config.items() if v and c != "underlay"}
        out[metric] = row
    return out


def markdown(summary: dict[str, Any]) -> str:
    head = ("| metric | ours | ours, tuning off | Docker's overlay | underlay | ours / Docker "
            "(95% CI) | p | paired: ours / Docker, rounds won, p | ours / tuning off (95% CI) "
            "| p | paired: ours / tuning off, rounds won, p | ours / underlay | n per config |")
    lines = [head, "|---|" + "---:|" * 12]
    for metric, row in summary.items():
        label, unit, _ = METRICS[metric]

        def med(c: str, row: dict[str, Any] = row) -> str:
            return f"{row[c]['median']:.3g}" if c in row else "-"

        def cmp(other: str, row: dict[str, Any] = row) -> tuple[str, str, str]:
            c = row.get(f"ours_vs_{other}")
            if not c:
                return "-", "-", "-"
            paired = "-"
            if "paired_p" in c:
                paired = (f"{c['paired_median_ratio']:.3f}, {c['paired_wins']:.0%}, "
                          f"{c['paired_p']:.2g}")
            return (f"{c['ratio']:.3f} ({c['ci_low']:.3f}-{c['ci_high']:.3f})", f"{c['p']:.2g}",
                    paired)

        d, dp, dw = cmp("docker")
        t, tp, tw = cmp("ours-plain")
        u = row.get("ours_vs_underlay", {}).get("ratio")
        n = "/".join(str(row[c]["n"]) for c in CONFIGS if c in row)
        lines.append(f"| {label} ({unit}) | {med('ours')} | {med('ours-plain')} | "
                     f"{med('docker')} | {med('underlay')} | {d} | {dp} | {dw} | {t} | {tp} | "
                     f"{tw} | {'-' if u is None else f'{u:.3f}'} | {n} |")
        if "overhead_ms" in row:
            o = row["overhead_ms"]
            lines.append("| … RTT over the underlay (µs) | " + " | ".join(
                f"{o[c] * 1000:.1f}" if c in o else "-" for c in CONFIGS[:3])
                + " | 0 | | | | | | | | |")
    return "\n".join(lines)


def pooled(paths: list[Path]) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        for metric, by_config in json.loads(path.read_text())["samples"].items():
            for config, values in by_config.items():
                samples.setdefault(metric, {}).setdefault(config, []).extend(values)
    return samples


def inspect(lab: Lab, nets: dict[str, Net]) -> dict[str, Any]:
    """Node 1's namespace of each network as the driver left it: the bridge-nf-call sysctls
    and the VXLAN device's checksum flag (read with the tools: cat and ip)."""
    node = lab.node(1)
    out: dict[str, Any] = {}
    for config, net in nets.items():
        path = (str(node.plugin_run_source / "netns" / f"sn-{net.id[:12]}")
                if net.driver.label == OURS else f"/run/docker/netns/1-{net.id[:10]}")
        try:
            nf = node_mount_exec(node, path, ["sh", "-c", "cat /proc/sys/net/bridge/"
                                              "bridge-nf-call-ip*tables"]).stdout.split()
            links = json.loads(node_mount_exec(node, path, ["ip", "-j", "-d", "link", "show",
                                                            "type", "vxlan"]).stdout or "[]")
        except (LabError, subprocess.SubprocessError, ValueError) as e:
            out[config] = {"error": str(e)}
            continue
        data = [link.get("linkinfo", {}).get("info_data", {}) for link in links]
        out[config] = {"bridge-nf-call-ip(6)tables": nf,
                       "vxlan_udp_csum": [d.get("udp_csum") for d in data]}
    return out


def run(lab: Lab, args: argparse.Namespace, samples: dict[str, dict[str, list[float]]],
        failures: list[str], report: dict[str, Any]) -> None:
    driver = Driver(OURS, args.plugin_name, args.plugin_name)
    docker = Driver(DOCKER, "overlay", None)
    subnets = list(ipaddress.IPv4Network("10.215.0.0/16").subnets(new_prefix=24))
    nets = {"ours": Net(driver, "dp-sn", subnets[1]),
            "ours-plain": Net(driver, "dp-sn-plain", subnets[2],
                              options={"swarmnet.tuning": "off"}),
            "docker": Net(docker, "dp-ov", subnets[3])}
    try:
        with step("networks and holders on nodes 1 and 2"):
            for net in nets.values():
                create_network(lab, net)
                start_holders(lab, net, [1, 2])
        report["namespaces"] = inspect(lab, nets)
        log(f"namespaces: {report['namespaces']}")
        for r in range(args.rounds):
            for config in order(r):
                for metric in args.metrics:
                    try:
                        values = measure(lab, nets, config, metric, args)
                    except (LabError, subprocess.TimeoutExpired, ValueError, KeyError) as e:
                        failures.append(f"{config} {metric} round {r}: {e}")
                        continue
                    samples.setdefault(metric, {}).setdefault(config, []).extend(values)
                    time.sleep(0.5)  # let TIME_WAIT and softirq backlog settle
            log(f"round {r + 1}/{args.rounds} done")
    finally:
        with step("remove the networks"):
            for net in nets.values():
                remove_network(lab, net.name)


def measure_all(args: argparse.Namespace, samples: dict[str, dict[str, list[float]]],
                failures: list[str], report: dict[str, Any]) -> int:
    """Lab up, plugin built and installed, the rounds, lab down; 1 on an error."""
    from bench.run import build_plugin  # the same bundle logic as `make bench`

    lab = Lab.from_state(args.workdir) if args.existing else Lab(3, args.workdir, name=args.name)
    try:
        if not args.existing:
            with step("lab up (3 nodes)"):
                lab.up()
            build_plugin(lab, args)
            with step(f"install {args.plugin_name}"):
                lab.install_plugin(args.plugin, args.plugin_name, {})
        run(lab, args, samples, failures, report)
    except BaseException as e:
        report["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        return 1
    finally:
        if not (args.existing or args.keep):
            with step("lab down"):
                lab.down()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()
    started = time.time()
    samples = pooled(args.pool)
    failures: list[str] = []
    report: dict[str, Any] = {
        "benchmark": "data path: ours, ours with tuning off, Docker's overlay, underlay (issue 17)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
        "loadavg_start": load, "pooled_from": [str(p) for p in args.pool],
        "settings": {k: getattr(args, k) for k in ("rounds", "tcp_seconds", "udp_seconds",
                                                   "pings", "metrics")},
    }
    status = 0 if args.report_only else measure_all(args, samples, failures, report)
    report.update(duration_s=round(time.time() - started, 1), loadavg_end=os.getloadavg(),
                  failures=failures, samples=samples, summary=summarize(samples))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report["summary"])
    args.out.with_suffix(".md").write_text(table + "\n")
    if "tcp" in samples:
        plot(samples, args.out.with_suffix(".png"))
    print(f"\ndata path, {report['duration_s']:.0f} s, load average {load[0]:.2f} at start\n")
    print(table)
    for f in failures:
        print(f"FAILURE: {f}")
    print(f"\nwritten to {args.out} (.md, .png)")
    return status or (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
