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
    log,
    node_mount_exec,
    remove_network,
    service_tasks,
    start_holders,
    step,
)
from testbed.prober import Prober


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
        probers = {i: Prober(holder.pid, targets, retrans_ms=arp_retrans_ms,
                             deadline=t0 + timeout, interval=0.2)
                   for i, holder in net.holders.items()}
        all_running = None
        # Until the probers are done and all tasks are Running (or the run's deadline).
        while any(p.running() for p in probers.values()) or (
                all_running is None and time.time() < t0 + timeout):
            if all_running is None and _running(ctx, svc) >= n:
                all_running = time.time() - t0
                log(f"scale {label}: all {n} tasks Running after {all_running:.1f}s")
            time.sleep(0.5)
        result["all_running_s"] = all_running
        per_node: dict[int, Any] = {}
        for i, p in probers.items():
            probe = p.result(timeout=60)
            per_node[i] = {"all_reachable_s": None if probe.all is None else probe.all - t0,
                           "reached": len(probe.first), "missing": probe.missing[:20],
                           "first_reply_s": sorted(v - t0 for v in probe.first.values())}
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
