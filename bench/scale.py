"""Scale: ``docker service create --replicas N`` (default 300, spread over the 3 nodes by swarm)
on a fresh network, then the time until every task's address answers a ping from every node,
and the FDB and neighbour entries each node then holds for the network.

On every node a holder container on the network runs a prober (in its network namespace, with
the ARP retransmit time lowered as in the convergence benchmark) that pings each task address
every 0.2 s until it answers. The clock starts just before `docker service create`, so the time
includes swarm scheduling and Docker starting N containers (the same work for both drivers);
the time until all N tasks are Running is reported next to it. The drivers take turns, one
whole run each; every run's service and network are removed before the next starts."""

from __future__ import annotations

import ipaddress
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import (
    IMAGE,
    Context,
    LabError,
    Net,
    Node,
    Row,
    alternate,
    create_network,
    in_netns,
    log,
    node_mount_exec,
    remove_network,
    service_tasks,
    start_holders,
    step,
)

# argv: arp_retrans_ms, deadline (epoch); stdin: one target address per line.
# Prints one JSON line: {"all": epoch of the last first reply or null, "first": {ip: epoch}}.
PROBER = r"""
import json, os, select, socket, struct, sys, time
retrans, deadline = sys.argv[1], float(sys.argv[2])
targets = [t.strip() for t in sys.stdin.read().split() if t.strip()]
base = "/proc/sys/net/ipv4/neigh"
for dev in os.listdir(base):
    if dev != "lo":
        with open(f"{base}/{dev}/retrans_time_ms", "w") as f:
            f.write(retrans)
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.setblocking(False)
ident = os.getpid() & 0xFFFF
payload = b"snlab-scale"
def checksum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
def packet(seq):
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
    return struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), ident, seq & 0xFFFF) + payload
first = {}
pending = set(targets)
seq = 0
while pending and time.time() < deadline:
    for t in list(pending):
        seq += 1
        try:
            sock.sendto(packet(seq), (t, 0))
        except OSError:
            pass  # EHOSTUNREACH while ARP fails: the next round tries again
    cycle_end = time.monotonic() + 0.2
    while pending:
        left = cycle_end - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            continue
        while True:
            try:
                data, (src, _) = sock.recvfrom(2048)
            except BlockingIOError:
                break
            ihl = (data[0] & 0x0F) * 4
            icmp_type, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if icmp_type == 0 and rid == ident and src in pending:
                pending.discard(src)
                first[src] = time.time()
print(json.dumps({"all": max(first.values()) if not pending and first else None,
                  "first": first, "missing": sorted(pending)}), flush=True)
"""


def subnet_for(base: ipaddress.IPv4Network, n: int, index: int) -> ipaddress.IPv4Network:
    """The ``index``-th subnet of ``base`` big enough for n tasks plus holders and spare."""
    prefix = min(24, 32 - math.ceil(math.log2(n + 32)))
    return list(base.subnets(new_prefix=prefix))[index]


def _task_addresses(ctx: Context, svc: str, net: Net, n: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        addrs = []
        for task in service_tasks(ctx.lab, svc):
            if task.get("DesiredState") != "running":
                continue
            for att in task.get("NetworksAttachments") or []:
                if att["Network"]["ID"] == net.id and att.get("Addresses"):
                    addrs.append(att["Addresses"][0].split("/")[0])
        if len(addrs) >= n:
            return sorted(set(addrs), key=ipaddress.IPv4Address)
        if time.monotonic() > deadline:
            raise LabError(f"{svc}: only {len(addrs)} of {n} tasks have an address "
                           f"after {timeout:g}s")
        time.sleep(0.5)


def _running(ctx: Context, svc: str) -> int:
    return sum(1 for t in service_tasks(ctx.lab, svc)
               if t.get("DesiredState") == "running" and t["Status"]["State"] == "running")


def kernel_entries(node: Node, net: Net, plugin_run: bool) -> dict[str, int]:
    """Remote FDB entries (with a VTEP) and permanent neighbour entries on the network's VXLAN
    device in this node's namespace for the network (ours: the plugin's netns/sn-<id12>;
    Docker's: /run/docker/netns/1-<id10>). Both live in the node's mount namespace."""
    if plugin_run:
        path = str(node.plugin_run_source / "netns" / f"sn-{net.id[:12]}")
    else:
        path = f"/run/docker/netns/1-{net.id[:10]}"
    links = json.loads(node_mount_exec(node, path, ["ip", "-j", "-d", "link", "show",
                                                    "type", "vxlan"]).stdout or "[]")
    if len(links) != 1:
        raise LabError(f"{node.netns}: expected one VXLAN device in {path}, got {len(links)}")
    dev = links[0]["ifname"]
    fdb = json.loads(node_mount_exec(node, path, ["bridge", "-j", "fdb", "show", "dev",
                                                  dev]).stdout or "[]")
    neigh = json.loads(node_mount_exec(node, path, ["ip", "-j", "neigh", "show", "dev",
                                                    dev]).stdout or "[]")
    return {"fdb": sum(1 for e in fdb if e.get("dst")),
            "neigh": sum(1 for e in neigh if "PERMANENT" in (e.get("state") or []))}


def run_once(ctx: Context, label: str, subnet: ipaddress.IPv4Network, n: int, timeout: float,
             arp_retrans_ms: int) -> dict[str, Any]:
    net = Net(ctx.nets[label].driver, f"bsc-{label}", subnet)
    lab = ctx.lab
    result: dict[str, Any] = {"driver": label, "n": n, "subnet": str(subnet)}
    try:
        with step(f"scale {label}: network and probes"):
            create_network(lab, net)
            start_holders(lab, net, [node.index for node in lab.nodes])
        svc = f"{net.name}-svc"
        t0 = time.time()
        lab.manager().docker("service", "create", "--detach", "--no-resolve-image", "--name", svc,
                             "--network", net.name, "--replicas", str(n), "--endpoint-mode",
                             "dnsrr", IMAGE, "sleep", "1d", timeout=120)
        targets = _task_addresses(ctx, svc, net, n, timeout)
        result["addresses_known_s"] = time.time() - t0
        probers = {}
        for i, holder in net.holders.items():
            probers[i] = subprocess.Popen(
                in_netns(holder.pid, [sys.executable, "-c", PROBER, str(arp_retrans_ms),
                                      str(t0 + timeout)]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stdin = probers[i].stdin
            assert stdin is not None
            stdin.write("\n".join(targets) + "\n")
            stdin.close()
        all_running = None
        # Until the probers are done and all tasks are Running (or the run's deadline).
        while any(p.poll() is None for p in probers.values()) or (
                all_running is None and time.time() < t0 + timeout):
            if all_running is None and _running(ctx, svc) >= n:
                all_running = time.time() - t0
                log(f"scale {label}: all {n} tasks Running after {all_running:.1f}s")
            time.sleep(0.5)
        result["all_running_s"] = all_running
        per_node: dict[int, Any] = {}
        for i, p in probers.items():
            out = p.stdout.read() if p.stdout else ""
            err = p.stderr.read() if p.stderr else ""
            try:
                rep = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise LabError(f"scale prober on node {i} failed: {out[-300:]} "
                               f"{err[-500:]}") from None
            per_node[i] = {"all_reachable_s": None if rep["all"] is None else rep["all"] - t0,
                           "reached": len(rep["first"]), "missing": rep["missing"][:20],
                           "first_reply_s": sorted(v - t0 for v in rep["first"].values())}
        result["nodes"] = per_node
        log(f"scale {label}: all reachable (s) per node: "
            + ", ".join(f"node{i} {v['all_reachable_s']}" for i, v in per_node.items()))
        for node in lab.nodes:
            per_node[node.index]["entries"] = kernel_entries(node, net, label == "ours")
        if ctx.settings.get("after_scale") is not None:
            after: Callable[[str], None] = ctx.settings["after_scale"]
            after(label)
    finally:
        with step(f"scale {label}: remove {n} tasks and the network"):
            remove_network(lab, net.name)
    return result


def measure(ctx: Context, n: int, runs: int, base: ipaddress.IPv4Network, timeout: float = 600,
            arp_retrans_ms: int = 10) -> list[Row]:
    nodes = len(ctx.lab.nodes)
    reach = Row("scale_reach", f"scale: {n} task endpoints on {nodes} nodes, until all reachable "
                "(per node)", "s")
    running = Row("scale_running", f"  of which: all {n} tasks Running", "s")
    fdb = Row("scale_fdb", "  remote FDB entries per node after scale", "entries")
    neigh = Row("scale_neigh", "  neighbour entries per node after scale", "entries")
    raw = []
    for r in range(runs):
        for k, label in enumerate(alternate(r, ctx.order)):
            subnet = subnet_for(base, n, 2 * r + k)
            try:
                res = run_once(ctx, label, subnet, n, timeout, arp_retrans_ms)
            except (LabError, subprocess.SubprocessError, OSError) as e:
                reach.failures.append(f"{label} run {r}: {e}")
                continue
            raw.append(res)
            if res["all_running_s"] is not None:
                running.add(label, res["all_running_s"])
            for i, v in res["nodes"].items():
                if v["all_reachable_s"] is None:
                    reach.failures.append(f"{label} run {r}: node {i} reached only "
                                          f"{v['reached']} of {n}, e.g. {v['missing'][:5]}")
                else:
                    reach.add(label, v["all_reachable_s"])
                fdb.add(label, v["entries"]["fdb"])
                neigh.add(label, v["entries"]["neigh"])
    reach.extra["runs"] = [{k: v for k, v in res.items()} for res in raw]
    reach.extra["expected_remote_entries_per_node"] = f"about {(n + nodes) * (nodes - 1) // nodes}"
    return [reach, running, fdb, neigh]
