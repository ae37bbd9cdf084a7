"""Where a TCP stream's time goes on our data path: `perf record -a -g` and softirq accounting
during iperf3, for a tuned network, the same with tuning off, and the underlay; plus each
hop's offload features. No dockerd: two hosts made of namespaces running the driver service
with the netlink kernel (testbed/hostlab.py), the same devices the plugin makes, on a veth
underlay through a bridge as in the lab.

    python -m bench.datapath_profile            # needs root, perf and iperf3; about 1 minute
    python -m bench.datapath_profile --udp 64 --out build/bench/datapath-profile-udp64.json

Writes build/bench/datapath-profile.{json,md}. Everything runs on one 2-core machine, so
sender and receiver share the CPUs; the call chains tell the directions apart (tcp_sendmsg
and vxlan_xmit on the way out, vxlan_rcv, gro_cell_poll and tcp_recvmsg on the way in).
Over a veth underlay the whole path of a packet runs in the softirq its sender raised.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from driver import names  # noqa: E402
from driver.config import EncryptionConfig  # noqa: E402
from driver.messages import CreateNetwork, IPData, NetworkOptions  # noqa: E402
from testbed.features import WATCHED, features  # noqa: E402
from testbed.hostlab import Endpoint, HostLab  # noqa: E402

NETS = {"tuned": ("c1" * 32, 4301, "10.61.0.0/24", True),
        "plain": ("c2" * 32, 4302, "10.62.0.0/24", False)}
# Functions whose inclusive share (children) says where a stream's time goes.
FOCUS = ("tcp_sendmsg", "tcp_recvmsg", "udp_sendmsg", "udp_recvmsg", "handle_softirqs",
         "net_rx_action", "process_backlog",
         "br_handle_frame", "nf_hook_slow", "br_nf_pre_routing", "br_nf_forward_ip",
         "br_nf_post_routing", "vxlan_xmit", "udp_tunnel_xmit_skb", "vxlan_rcv",
         "gro_cell_poll", "veth_xmit", "udp_queue_rcv_one_skb", "skb_checksum_help",
         "__skb_gso_segment", "_copy_from_iter", "_copy_to_iter",
         "__pv_queued_spin_lock_slowpath", "pv_native_safe_halt")
PERF_LINE = re.compile(r"^\s+([0-9.]+)%\s+([0-9.]+)%\s+\[[k.]\]\s+(\S+)")
SELF_LINE = re.compile(r"^\s+([0-9.]+)%\s+\[[k.]\]\s+(\S+)")


def make_lab(root: Path) -> tuple[HostLab, dict[str, tuple[Endpoint, Endpoint]]]:
    lab = HostLab(root, 2, EncryptionConfig())
    pairs: dict[str, tuple[Endpoint, Endpoint]] = {}
    try:
        for label, (nid, vni, subnet, tuning) in NETS.items():
            net = ipaddress.ip_network(subnet)
            gw = ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}")
            options = NetworkOptions(raw={"swarmnet.vni": str(vni)}, vni=vni, tuning=tuning)
            for host in lab.hosts:
                host.service.create_network(
                    CreateNetwork(nid, options, ipv4=(IPData(pool=net, gateway=gw),)))
            a = lab.hosts[0].join(nid, f"{vni}a".ljust(64, "a"), f"{net.network_address + 2}/24")
            b = lab.hosts[1].join(nid, f"{vni}b".ljust(64, "b"), f"{net.network_address + 3}/24")
            pairs[label] = (a, b)
        lab.hub.deliver()
    except BaseException:
        lab.close()
        raise
    return lab, pairs


def softirqs() -> dict[str, int]:
    out = {}
    for line in Path("/proc/softirqs").read_text().splitlines()[1:]:
        name, *counts = line.split()
        out[name.rstrip(":")] = sum(int(c) for c in counts)
    return out


def cpu_times() -> list[int]:
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def profile(client: Path, server: Path, dst: str, seconds: int, perf_seconds: int,
            data: Path, udp: int) -> dict[str, Any]:
    srv = subprocess.Popen(["nsenter", f"--net={server}", "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    extra = ["-u", "-b", "0", "-l", str(udp)] if udp else []
    cli = subprocess.Popen(["nsenter", f"--net={client}", "iperf3", "-c", dst, "-t",
                            str(seconds), "-J", *extra], stdout=subprocess.PIPE, text=True)
    time.sleep(max(1, (seconds - perf_seconds) // 2))
    irq0, cpu0 = softirqs(), cpu_times()
    subprocess.run(["perf", "record", "-a", "-g", "-o", str(data), "--", "sleep",
                    str(perf_seconds)], capture_output=True, check=True)
    irq1, cpu1 = softirqs(), cpu_times()
    out, _ = cli.communicate(timeout=seconds + 30)
    srv.wait(timeout=30)
    result = json.loads(out)
    ticks = [b - a for a, b in zip(cpu0, cpu1, strict=False)]
    total = sum(ticks) or 1
    # /proc/stat: user nice system idle iowait irq softirq steal ...
    shares = dict(zip(("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"),
                      (round(100 * t / total, 1) for t in ticks), strict=False))
    got = result["end"]["sum_received"]
    return {
        "gbps": got["bits_per_second"] / 1e9,
        "kpps": (got.get("packets", 0) - got.get("lost_packets", 0)) / got["seconds"] / 1e3,
        "retransmits": result["end"]["sum_sent"].get("retransmits", 0),
        "cpu_percent": shares,
        "softirqs_per_s": {k: round((irq1[k] - irq0[k]) / perf_seconds)
                           for k in ("NET_RX", "NET_TX") if k in irq1},
        "self": report(data, children=False)[:15],
        "children": [r for r in report(data, children=True) if r[0] in FOCUS],
    }


def report(data: Path, children: bool) -> list[tuple[str, float]]:
    argv = ["perf", "report", "-i", str(data), "--stdio", "--sort", "sym", "-g", "none"]
    argv.append("--children" if children else "--no-children")
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in text.splitlines():
        m = (PERF_LINE if children else SELF_LINE).match(line)
        if m:
            rows.append((m.group(3 if children else 2), float(m.group(1))))
    return rows


def hops(lab: HostLab, pairs: dict[str, tuple[Endpoint, Endpoint]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    host = lab.hosts[0]
    for label, (a, _) in pairs.items():
        netns = host.node.netns_dir / names.netns(a.network_id)
        devices = {"container eth0": (a.container, "eth0"),
                   "veth, bridge side": (netns, names.veth_bridge(a.endpoint_id)),
                   "bridge": (netns, names.BRIDGE), "vxlan": (netns, names.VXLAN)}
        out[label] = {hop: {k: v for k, v in features(ns, dev).items() if k in WATCHED}
                      for hop, (ns, dev) in devices.items()}
    out["underlay (the host's, not ours)"] = {
        "ul0": {k: v for k, v in features(host.ns, "ul0").items() if k in WATCHED}}
    return out


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    labels = list(runs)
    lines = ["| | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]

    def row(name: str, cell: Any) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(runs[k]) for k in labels) + " |")

    row("Gbit/s (this run)", lambda r: f"{r['gbps']:.2f}")
    if any(r["kpps"] for r in runs.values()):
        row("UDP kpps delivered (this run)", lambda r: f"{r['kpps']:.0f}")
    row("CPU idle / softirq / system %", lambda r: "{idle} / {softirq} / {system}".format(
        **r["cpu_percent"]))
    row("NET_RX softirqs per s", lambda r: str(r["softirqs_per_s"].get("NET_RX", "-")))
    for fn in FOCUS:
        row(f"`{fn}` (incl. children) %",
            lambda r, fn=fn: next((f"{v:.2f}" for k, v in r["children"] if k == fn), "-"))
    lines += ["", "Top symbols by self time (%):", ""]
    for k in labels:
        lines.append(f"- {k}: " + ", ".join(f"`{s}` {v:.1f}" for s, v in runs[k]["self"][:10]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.datapath_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=10, help="iperf3 run per configuration")
    p.add_argument("--perf-seconds", type=int, default=5)
    p.add_argument("--udp", type=int, default=0, metavar="BYTES",
                   help="UDP at this payload size (unlimited rate) instead of TCP")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "datapath-profile.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swarmnet-dpprof-") as tmp:
        lab, pairs = make_lab(Path(tmp) / "lab")
        try:
            found = hops(lab, pairs)
            runs: dict[str, dict[str, Any]] = {}
            for label in ("plain", "tuned"):
                a, b = pairs[label]
                runs[label] = profile(a.container, b.container, str(b.address.ip), args.seconds,
                                      args.perf_seconds, Path(tmp) / f"{label}.data", args.udp)
            runs["underlay"] = profile(lab.hosts[0].ns, lab.hosts[1].ns,
                                       str(lab.hosts[1].vtep), args.seconds, args.perf_seconds,
                                       Path(tmp) / "underlay.data", args.udp)
        finally:
            lab.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "udp": args.udp,
                                    "runs": runs, "features": found}, indent=2) + "\n")
    table = markdown(runs)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print("\nfeatures per hop:")
    for label, devs in found.items():
        for hop, feats in devs.items():
            print(f"  {label:8s} {hop:18s} " + " ".join(
                f"{k}={'on' if v else 'off'}" for k, v in feats.items()))
    print(f"\nwritten to {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
