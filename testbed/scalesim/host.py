"""A process hosting many simulated nodes, driven by JSON lines on stdin (one reply line each
on stdout): ``python -m testbed.scalesim.host``. Logs go to stderr at WARNING.

Commands (``op``): build, watch, status, join, leave, kill, added, removed, stats,
gc_freeze, gc_off, stop.
Every wait inside is bounded; the process exits on ``stop``, on end of input, or when its
parent dies (stdin closes).
"""

from __future__ import annotations

import gc
import ipaddress
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from plugin.controlplane import keeper
from testbed import proc
from testbed.scalesim.gcpauses import GcPauses
from testbed.scalesim.node import SimNode, bootstrap_ip, endpoint_id

Reply = dict[str, Any]


def raise_fd_limit() -> int:
    """Each node holds two connections to etcd: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Host:
    def __init__(self) -> None:
        self.nodes: dict[int, SimNode] = {}
        self.gc = GcPauses()

    def build(self, cmd: Reply) -> Reply:
        """Nodes with their networks and bootstrap endpoints, keepers running, not watching."""
        url, ttl, nets, eps = cmd["url"], int(cmd["ttl"]), int(cmd["networks"]), int(cmd["eps"])
        if cmd.get("resync"):
            # The keeper's periodic full diff against the kernel: O(a node's peers) every
            # 30 s per node. Real nodes can afford it; N simulated ones on 2 cores cannot.
            keeper.RESYNC_INTERVAL = float(cmd["resync"])
        relays = cmd.get("relays") or {}
        for i in cmd["indices"]:
            node = SimNode(i, url, ttl, nets, relays.get(str(i), ()))
            self.nodes[i] = node
            for j in range(eps):
                # Spread evenly: endpoint j of node i in network j % nets.
                n = j % nets
                slot = i * -(-eps // nets) + j // nets
                node.join(n, endpoint_id(i, j), bootstrap_ip(n, slot))
        return {"fd_limit": raise_fd_limit(), "threads": threading.active_count()}

    def watch(self, cmd: Reply) -> Reply:
        """Start every node's watcher, a few listing at a time (bounded waits)."""
        in_flight = int(cmd.get("in_flight", 4))
        max_rss = int(cmd.get("max_rss", 0))
        started: list[SimNode] = []
        for node in self.nodes.values():
            if max_rss and proc.rss_bytes() > max_rss:
                # Past this the machine (shared) would swap or kill something: stop here.
                raise MemoryError(f"RSS {proc.rss_bytes() >> 20} MiB over the {max_rss >> 20} MiB "
                                  f"limit after {len(started)} watchers")
            node.control.start_watching()
            started.append(node)
            deadline = time.monotonic() + 60
            while sum(not n.control.listed() for n in started) >= in_flight:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        return {"threads": threading.active_count()}

    def status(self, cmd: Reply) -> Reply:
        """How many live nodes hold exactly ``total`` minus their own endpoints."""
        total = int(cmd["total"])
        live = [n for n in self.nodes.values() if n.alive]
        done = sum(n.kernel.peer_count() == total - len(n.endpoints) for n in live)
        return {"live": len(live), "complete": done}

    def join(self, cmd: Reply) -> Reply:
        node = self.nodes[int(cmd["node"])]
        at = node.join(int(cmd["net"]), cmd["eid"], ipaddress.ip_address(cmd["ip"]))
        return {"at": at}

    def leave(self, cmd: Reply) -> Reply:
        return {"at": self.nodes[int(cmd["node"])].leave(cmd["eid"])}

    def kill(self, cmd: Reply) -> Reply:
        """Stop the nodes' keep-alives and watches at once; their leases lapse."""
        at = time.time()
        doomed = [self.nodes[int(i)] for i in cmd["nodes"]]
        for node in doomed:
            node.alive = False
        for node in doomed:
            node.control.close()
        return {"at": at}

    def added(self, cmd: Reply) -> Reply:
        """Per IP: how many live nodes programmed it (it may have left since), and the
        latest time one of them did."""
        out: dict[str, list[float]] = {}
        live = [n for n in self.nodes.values() if n.alive]
        for text in cmd["ips"]:
            ip = ipaddress.ip_address(text)
            count, latest = 0, 0.0
            for n in live:
                t = n.kernel.added_at.get(ip)
                if t is not None:
                    count += 1
                    latest = max(latest, t)
            out[text] = [count, latest]
        return {"ips": out}

    def removed(self, cmd: Reply) -> Reply:
        """Per IP: how many live nodes still hold it, and the latest removal time seen."""
        out: dict[str, list[float]] = {}
        live = [n for n in self.nodes.values() if n.alive]
        for text in cmd["ips"]:
            ip = ipaddress.ip_address(text)
            held = sum(n.kernel.holds(ip) for n in live)
            latest = max((n.kernel.removed_at.get(ip, 0.0) for n in live), default=0.0)
            out[text] = [held, latest]
        return {"ips": out}

    def stats(self, cmd: Reply) -> Reply:
        traffic: dict[str, list[int]] = {}
        for n in self.nodes.values():
            for call, row in n.traffic.snapshot().items():
                acc = traffic.setdefault(call, [0, 0, 0])
                for k in range(3):
                    acc[k] += row[k]
        return {
            "cpu": process_cpu(),
            "rss": proc.rss_bytes(),
            "threads": threading.active_count(),
            "events": sum(n.counted.events for n in self.nodes.values()),
            "traffic": traffic,
            "gc": self.gc.snapshot(),
            "wall": time.time(),
        }

    def gc_freeze(self, cmd: Reply) -> Reply:
        """Collect once, then exempt every object that survives from later collections.

        Legitimate for a simulator only: this process holds the records of half the
        cluster's nodes in one heap (each node's view of every peer), so a full collection
        scans O(N^2) objects and stops all of them at once, which no real node, holding one
        node's records, does. Frozen objects are still freed by reference counting; the
        collect first keeps the bootstrap's cyclic garbage from being frozen for good.
        """
        t = time.perf_counter()
        gc.collect()
        collect_s = time.perf_counter() - t
        gc.freeze()
        return {"frozen": gc.get_freeze_count(), "collect_s": collect_s}

    def gc_off(self, cmd: Reply) -> Reply:
        """No automatic cycle collection in this process for the rest of the run.

        For the same reason as ``gc_freeze``, which does not last: the objects that resyncs
        and snapshots make later are collected again, with pauses of 0.3-0.6 s at 300 nodes.
        Off, nothing pauses every node of the process at once; cyclic garbage is not freed,
        so RSS grows (the bench's --max-rss-gib still stops a size), and the collector's
        CPU is not spent: a real node spends it on its own heap only.
        """
        gc.disable()
        return {"enabled": gc.isenabled()}

    def endpoints(self, cmd: Reply) -> Reply:
        """Every endpoint of the given nodes: [node, endpoint ID, IP]."""
        rows = [
            [i, eid, str(ip)]
            for i in cmd["nodes"]
            for eid, (_, ip) in self.nodes[int(i)].endpoints.items()
        ]
        return {"endpoints": rows}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s host %(levelname)s %(name)s: %(message)s")
    raise_fd_limit()
    host = Host()
    host.gc.install()
    ops: dict[str, Callable[[Reply], Reply]] = {
        "build": host.build, "watch": host.watch, "status": host.status, "join": host.join,
        "leave": host.leave, "kill": host.kill, "added": host.added, "removed": host.removed,
        "stats": host.stats, "endpoints": host.endpoints, "gc_freeze": host.gc_freeze,
        "gc_off": host.gc_off,
    }  # fmt: skip
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "stop":
            break
        try:
            reply = ops[cmd["op"]](cmd)
            reply["ok"] = True
        except Exception as e:
            logging.exception("host: %s failed", cmd["op"])
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    sys.stdout.flush()
    # The nodes' threads are daemons blocked on etcd: nothing to hand over, leave at once.
    os._exit(0)


if __name__ == "__main__":
    main()
