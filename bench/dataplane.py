"""The data path: ping RTT and iperf3 TCP throughput between containers on node 1 and node 2,
for both drivers alternating, next to the same between the two nodes' own namespaces (the
underlay, no VXLAN: the ceiling).

How the tools run: the host's ``ping`` and ``iperf3`` binaries, started with
``nsenter --net=/proc/<container pid>/ns/net``, so they use exactly the container's network
stack (its eth0, routes, MTU, veth, bridge and VXLAN device) while the program comes from the
host (the busybox image has no iperf3). They do not run in the container's cgroup; the lab's
containers have no CPU or memory limits, so that changes nothing measured here."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from bench.common import Context, LabError, Row, alternate, in_netns, log, wait_until

CEILING = "ceiling"
_RTT = re.compile(r"time=([0-9.]+) ms")
PORT = 5201


def _ends(ctx: Context, label: str) -> tuple[int | str, int | str, str]:
    """(client namespace, server namespace, server address) for a driver or the underlay."""
    if label == CEILING:
        n1, n2 = ctx.lab.node(1), ctx.lab.node(2)
        return n1.netns, n2.netns, str(n2.address)
    net = ctx.nets[label]
    return net.holders[1].pid, net.holders[2].pid, str(net.holders[2].ip)


def ping_rtts(client: int | str, dst: str, count: int, interval: float = 0.02) -> list[float]:
    subprocess.run(in_netns(client, ["ping", "-c", "3", "-i", "0.05", "-W", "1", dst]),
                   capture_output=True, timeout=30)  # warm-up: ARP, caches
    out = subprocess.run(in_netns(client, ["ping", "-c", str(count), "-i", str(interval), "-W",
                                           "1", dst]),
                         capture_output=True, text=True, timeout=count * interval + 30)
    rtts = [float(m) for m in _RTT.findall(out.stdout)]
    if len(rtts) < count:
        raise LabError(f"ping {dst}: {count - len(rtts)} of {count} lost\n{out.stdout[-500:]}")
    return rtts


def measure_ping(ctx: Context, rounds: int, count: int = 20) -> list[Row]:
    row = Row("rtt", "ping RTT across hosts, container to container", "ms",
              target="ours within 3% of Docker's (median)")
    ceiling = Row("rtt_ceiling", "ping RTT, underlay node to node (ceiling, no VXLAN)", "ms",
                  docker=None)
    for r in range(rounds):
        for label in alternate(r, [*ctx.order, CEILING]):
            client, _server, dst = _ends(ctx, label)
            try:
                rtts = ping_rtts(client, dst, count)
            except (LabError, subprocess.TimeoutExpired) as e:
                (ceiling if label == CEILING else row).failures.append(f"{label} round {r}: {e}")
                continue
            for v in rtts:
                if label == CEILING:
                    ceiling.ours.append(v)
                else:
                    row.add(label, v)
    row.extra["pings_per_round"] = count
    return [row, ceiling]


def iperf3(client: int | str, server: int | str, dst: str, seconds: int,
           extra: Sequence[str] = ()) -> dict[str, Any]:
    srv = subprocess.Popen(in_netns(server, ["iperf3", "-s", "-1", "-p", str(PORT)]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(f"iperf3 server on {dst}", lambda: subprocess.run(
            in_netns(server, ["ss", "-Hltn", f"sport = :{PORT}"]), capture_output=True,
            text=True).stdout.strip(), 10, 0.05)
        out = subprocess.run(in_netns(client, ["iperf3", "-c", dst, "-p", str(PORT), "-t",
                                               str(seconds), "-J", *extra]),
                             capture_output=True, text=True, timeout=seconds + 60)
        result: dict[str, Any] = json.loads(out.stdout or "{}")
        if out.returncode != 0 or "error" in result:
            raise LabError(f"iperf3 -c {dst}: {result.get('error') or out.stderr.strip()}")
        return result
    finally:
        try:
            srv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def measure_iperf(ctx: Context, rounds: int, seconds: int = 10) -> list[Row]:
    row = Row("tcp", f"TCP throughput across hosts, iperf3 {seconds} s, container to container",
              "Gbit/s", better="higher", target="ours within 3% of Docker's (median)")
    ceiling = Row("tcp_ceiling", "TCP throughput, underlay node to node (ceiling, no VXLAN)",
                  "Gbit/s", better="higher", docker=None)
    retrans: dict[str, list[int]] = {}
    for r in range(rounds):
        for label in alternate(r, [*ctx.order, CEILING]):
            client, server, dst = _ends(ctx, label)
            try:
                res = iperf3(client, server, dst, seconds)
            except (LabError, subprocess.TimeoutExpired, ValueError) as e:
                (ceiling if label == CEILING else row).failures.append(f"{label} round {r}: {e}")
                continue
            gbps = res["end"]["sum_received"]["bits_per_second"] / 1e9
            retrans.setdefault(label, []).append(int(res["end"]["sum_sent"].get("retransmits",
                                                                                  0)))
            if label == CEILING:
                ceiling.ours.append(gbps)
            else:
                row.add(label, gbps)
            time.sleep(1)  # let TIME_WAIT and softirq backlog settle between runs
        log(f"iperf3 round {r + 1}/{rounds} done")
    row.extra["retransmits"] = {k: v for k, v in retrans.items() if k != CEILING}
    ceiling.extra["retransmits"] = retrans.get(CEILING, [])
    return [row, ceiling]
