"""Service VIP load balancing (issue 10): the data path through a VIP, the programming
delay, and the cost of many services. See docs/benchmarks.md, "Service VIP load balancing".

Needs IPVS, which this machine's kernel lacks, so it runs as root inside kernel-lab
(``make bench-lb`` does this)::

    KERNEL_LAB_QUIET=1 /work/shared/kernel-lab/run --timeout 1200 -- \\
        .venv/bin/python -m bench.lb_bench

Three parts, each on namespaces this process makes in a scratch directory and removes:

1. ``path``: a client and three backends on a bridge (10.99.0.0/24). Each backend
   accepts TCP on PORT and sends one byte, its number. The client's namespace is
   programmed by the real ``NetlinkLoadBalancer`` with one VIP over the three; the
   client times connect() plus the first byte, to VIP:PORT and to a backend's own
   address (in turn, as round robin does), in alternating batches (ABBA) so drift
   hits both alike.
2. ``delay``: N client sandboxes joined to one network (endpoint records with
   ``joined`` and ``sandbox_key`` in a local SQLite store), the real programmer
   (``driver.lb.programmer.LoadBalancing``) with its thread and the real adapter, and
   a service record in the shared store (a MemoryKV: no etcd round trip). Each
   repetition writes the record with one more backend and waits until every
   sandbox holds it: once without ``nudge()`` (the 1 s poll is part of the delay;
   the write lands at a random phase of it) and once with ``nudge()`` (the
   programming alone), in turn.
3. ``scale``: S services of three backends on one network, N sandboxes joined to it:
   ``sync()`` from nothing, after one backend of one service changed, with nothing
   changed; VmRSS before and after; what the kernel holds afterwards (``read()``).

Prints a table and writes JSON (default build/bench/lb.json).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPVS

from core.layout import StoreLayout
from driver.kernel import lb_ipvs, lb_nft, nsfs
from driver.kernel.lb import NetlinkLoadBalancer
from driver.lb.model import (
    Backend,
    SandboxState,
    ServiceRecord,
    mark,
    sandbox_state,
    virtual_service,
)
from driver.lb.programmer import LoadBalancing
from driver.records import EndpointRecord, encode
from plugin.app import STORE_ROOT
from plugin.store.memory import MemoryKV
from plugin.store.sqlite import SqliteKV
from testbed.netns import ipr_in

IP = ipaddress.IPv4Address
LAYOUT = StoreLayout(STORE_ROOT)
PREFIX = 24
CLIENT_IP = IP("10.99.0.10")
BACKEND_IPS = (IP("10.99.0.11"), IP("10.99.0.12"), IP("10.99.0.13"))
VIP = IP("10.99.0.100")
PORT = 8080
ASK_TIMEOUT = 10.0  # seconds; bounds one connection (a SYN lost twice still answers at 3 s)
NETWORK = "b10b" * 16
SERVICE = "5e12" * 6 + "5e"
WAIT = 120.0  # seconds; bounds every wait for the programmer
DIRECT_IP = IP("10.99.0.20")  # the client's second address, the source of direct connections
SLOW_US = 500_000  # a connection this slow lost a SYN (TCP retransmits it after 1 s)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank, as bench/common.py (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# --------------------------------------------------------------------------- namespaces


def index_of(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise RuntimeError(f"no link {name}")
    return int(found[0])


def new_netns(path: Path) -> Path:
    """A namespace bound at ``path`` with ``lo`` up (a sandbox, as Docker makes one)."""
    nsfs.create(path)
    try:
        with ipr_in(path) as ipr:
            ipr.link("set", index=index_of(ipr, "lo"), state="up")
    except BaseException:
        nsfs.remove(path)
        raise
    return path


@dataclass
class Conn:
    target: str
    us: float | None = None  # connect + first byte; None: failed
    tag: str = ""  # which backend answered
    sport: int = 0
    error: str = ""
    failed_after_us: float | None = None


class Scratch:
    """Every namespace made here, removed by ``close()`` whatever happened."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Path] = []

    def netns(self, name: str) -> Path:
        path = new_netns(self.root / name)
        self.made.append(path)
        return path

    def close(self) -> None:
        for path in reversed(self.made):
            with contextlib.suppress(OSError):
                nsfs.remove(path)
        self.made.clear()


class OneByteServer:
    """Accepts TCP on PORT in ``ns``; sends ``tag`` (one byte) and closes each connection."""

    def __init__(self, ns: Path, tag: bytes) -> None:
        self.tag = tag
        self.stop = threading.Event()
        self.sock = nsfs.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", PORT))
        self.sock.listen(256)
        self.sock.settimeout(0.2)  # bounds the loop: it sees ``stop`` within 0.2 s
        self.thread = threading.Thread(target=self._serve, name="lb-bench-server", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.tag)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


class PathLab:
    """A switch namespace with a bridge; a client and three backends on it."""

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch
        self.servers: list[OneByteServer] = []
        self.switch = scratch.netns("switch")
        with ipr_in(self.switch) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.link("set", index=index_of(ipr, "br0"), state="up")
        self.client = self._node("client", CLIENT_IP)
        with ipr_in(self.client) as ipr:
            ipr.addr("add", index=index_of(ipr, "eth0"), address=str(DIRECT_IP), prefixlen=PREFIX)
        try:
            for n, addr in enumerate(BACKEND_IPS, start=1):
                ns = self._node(f"t{n}", addr)
                self.servers.append(OneByteServer(ns, str(n).encode()))
        except BaseException:
            self.close()
            raise

    def _node(self, name: str, addr: IP) -> Path:
        path = self.scratch.netns(name)
        fd = nsfs.open_fd(path)
        try:
            with ipr_in(self.switch) as ipr:
                ipr.link("add", ifname=f"s-{name}", kind="veth", peer="eth0")
                ipr.link("set", index=index_of(ipr, "eth0"), net_ns_fd=fd)
                index = index_of(ipr, f"s-{name}")
                ipr.link("set", index=index, master=index_of(ipr, "br0"), state="up")
        finally:
            os.close(fd)
        with ipr_in(path) as ipr:
            index = index_of(ipr, "eth0")
            ipr.addr("add", index=index, address=str(addr), prefixlen=PREFIX)
            ipr.link("set", index=index, state="up")
        return path

    def connect_batch(self, targets: Sequence[IP], source: IP) -> list[Conn]:
        """One connection per target, from ``source`` (an address of the client): connect
        plus the first byte, timed. The sockets are made in a thread inside the client's
        namespace, so the timing holds no namespace switch. The source port is left to
        connect(), as for an unbound socket (IP_BIND_ADDRESS_NO_PORT)."""

        def body() -> list[Conn]:
            out = []
            for target in targets:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(ASK_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                conn = Conn(str(target))
                try:
                    sock.bind((str(source), 0))
                    start = time.perf_counter_ns()
                    try:
                        sock.connect((str(target), PORT))
                        got = sock.recv(1)
                        conn.us = (time.perf_counter_ns() - start) / 1000
                        conn.tag = got.decode() if len(got) == 1 else ""
                        if not conn.tag:
                            conn.error = "closed without a byte"
                    except OSError as exc:
                        conn.error = f"{type(exc).__name__}: {exc}"
                        conn.failed_after_us = (time.perf_counter_ns() - start) / 1000
                    with contextlib.suppress(OSError):
                        conn.sport = sock.getsockname()[1]
                finally:
                    sock.close()
                out.append(conn)
            return out

        return nsfs.run_in(self.client, body)

    def close(self) -> None:
        for server in self.servers:
            server.close()


# --------------------------------------------------------------------------- 1. data path


def bench_path(
    scratch: Scratch, connections: int, batches: int, direct_source: str
) -> dict[str, Any]:
    """``direct_source`` "own": direct connections leave from the client's second address,
    so they never share a 4-tuple with a VIP connection; "same": both leave from one
    address (see docs/benchmarks.md, why that costs the VIP a lost SYN now and then)."""
    lab = PathLab(scratch)  # its namespaces are the scratch's to remove
    try:
        lb = NetlinkLoadBalancer()
        lb.program(
            lab.client,
            sandbox_state([virtual_service(VIP, mark(1), dict.fromkeys(BACKEND_IPS, 1))]),
        )
        per_batch = max(1, connections // batches)
        sources = {"vip": CLIENT_IP, "direct": DIRECT_IP if direct_source == "own" else CLIENT_IP}
        targets = {
            "vip": [VIP] * per_batch,
            "direct": [BACKEND_IPS[i % len(BACKEND_IPS)] for i in range(per_batch)],
        }
        # Warm-up, not counted: ARP, the first IPVS connection, Python's own first calls.
        lab.connect_batch([VIP] * 6, sources["vip"])
        lab.connect_batch(list(BACKEND_IPS) * 2, sources["direct"])
        conns: dict[str, list[Conn]] = {"vip": [], "direct": []}
        order = []
        for b in range(batches):
            # ABBA: the kind that goes first swaps every batch.
            kinds = ("vip", "direct") if b % 2 == 0 else ("direct", "vip")
            order.append(kinds[0])
            for kind in kinds:
                conns[kind] += lab.connect_batch(targets[kind], sources[kind])
    finally:
        lab.close()
    samples = {k: [c.us for c in v if c.us is not None and c.tag] for k, v in conns.items()}
    vip, direct = summary(samples["vip"]), summary(samples["direct"])
    spread: dict[str, int] = {}
    for c in conns["vip"]:
        if c.tag:
            spread[c.tag] = spread.get(c.tag, 0) + 1
    # A port that an earlier connection of the other kind used (its conntrack entry and the
    # server's TIME_WAIT socket outlive it): what a lost SYN had in common, if anything.
    used: dict[str, set[int]] = {"vip": set(), "direct": set()}
    slow: dict[str, list[dict[str, Any]]] = {"vip": [], "direct": []}
    for i in range(max(len(v) for v in conns.values())):
        for kind in ("vip", "direct"):
            if i >= len(conns[kind]):
                continue
            c = conns[kind][i]
            other = "direct" if kind == "vip" else "vip"
            if c.us is None or not c.tag or c.us >= SLOW_US:
                slow[kind].append(
                    asdict(c) | {"index": i, "port_used_before_by_" + other: c.sport in used[other]}
                )
            used[kind].add(c.sport)
    return {
        "connections_each": per_batch * batches,
        "batches": batches,
        "first_in_batch": order,
        "direct_source": direct_source,
        "sources": {k: str(v) for k, v in sources.items()},
        "vip_us": vip,
        "direct_us": direct,
        "ratio_p50": vip["p50"] / direct["p50"],
        "ratio_p90": vip["p90"] / direct["p90"],
        "failures": {k: sum(1 for c in v if c.us is None or not c.tag) for k, v in conns.items()},
        "slow_over_500ms": {
            k: sum(1 for c in v if c.us and c.us >= SLOW_US) for k, v in conns.items()
        },
        "failed_or_slow": slow,
        "vip_backend_spread": dict(sorted(spread.items())),
        "samples_us": samples,
    }


# --------------------------------------------------------------------------- 2. delay


class Stamped:
    """The real adapter, noting when each ``program()`` began and returned."""

    def __init__(self, inner: NetlinkLoadBalancer) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.began: dict[str, tuple[SandboxState, float]] = {}
        self.done: dict[str, tuple[SandboxState, float]] = {}

    def unavailable(self) -> str | None:
        return self.inner.unavailable()

    def program(self, sandbox: Path, state: SandboxState) -> None:
        with self.lock:
            self.began[str(sandbox)] = (state, time.perf_counter())
        self.inner.program(sandbox, state)
        with self.lock:
            self.done[str(sandbox)] = (state, time.perf_counter())

    def clear(self, sandbox: Path) -> None:
        self.inner.clear(sandbox)

    def read(self, sandbox: Path) -> SandboxState:
        return self.inner.read(sandbox)


def join_sandboxes(scratch: Scratch, local: SqliteKV, prefix: str, count: int) -> list[Path]:
    """``count`` sandboxes, each with a joined endpoint on NETWORK in the local store."""
    out = []
    for i in range(count):
        path = scratch.netns(f"{prefix}{i}")
        ep = EndpointRecord(
            network_id=NETWORK,
            endpoint_id=f"{prefix}{i}".encode().hex().ljust(64, "0"),
            mac=f"02:42:0a:63:01:{i:02x}",
            address=ipaddress.ip_interface(f"10.99.1.{10 + i}/24"),
        ).with_join(str(path))
        local.put(LAYOUT.endpoint(NETWORK, ep.endpoint_id), encode(ep))
        out.append(path)
    return out


def key(rec: ServiceRecord) -> str:
    return LAYOUT.lb_service(rec.network_id, rec.service_id)


def record(
    service_id: str, vip: IP, index: int, backends: Sequence[IP], name: str = "web"
) -> ServiceRecord:
    return ServiceRecord(
        network_id=NETWORK,
        service_id=service_id,
        name=name,
        vip=vip,
        fwmark=mark(index),
        backends=tuple(sorted(Backend(ip) for ip in backends)),
    )


def holds(state: SandboxState, fwmark: int, ip: IP) -> bool:
    return any(vs.fwmark == fwmark and any(b.ip == ip for b in vs.backends) for vs in state)


def wait_until(what: str, done: Callable[[], bool], deadline: float, pause: float) -> None:
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not done within the bound")
        time.sleep(pause)


def confirm(paths: Sequence[Path], fwmark: int, ip: IP, deadline: float) -> None:
    """Poll read() of every sandbox until each shows ``ip``, all sandboxes at once (each
    thread with its own adapter, so no read waits on another's lock)."""

    def one(path: Path) -> None:
        reader = NetlinkLoadBalancer()
        while not holds(reader.read(path), fwmark, ip):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"read(): sandbox {path.name} lacks {ip}")

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        list(pool.map(one, paths))


def bench_delay(scratch: Scratch, sandboxes: int, reps: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    local = SqliteKV(scratch.root / "delay-local.db")
    shared = MemoryKV()
    paths = join_sandboxes(scratch, local, "d", sandboxes)
    stamped = Stamped(NetlinkLoadBalancer())
    reader = NetlinkLoadBalancer()  # its own lock: reading never waits on the programmer's
    start = time.perf_counter()
    for path in paths:
        reader.read(path)  # empty yet: the cost of one read()
    read_cost = [(time.perf_counter() - start) / len(paths) * 1000]
    vip, fwmark = IP("10.99.9.100"), mark(1)
    backends = [IP(f"10.99.8.{i}") for i in (1, 2, 3)]
    first = record(SERVICE, vip, 1, backends)
    shared.put(key(first), first.to_json())
    programmer = LoadBalancing(stamped, local, shared, layout=LAYOUT)
    programmer.start()
    rows: dict[str, list[dict[str, float]]] = {"poll": [], "nudge": []}
    try:
        wait_until(
            "first programming",
            lambda: all(holds(reader.read(p), fwmark, backends[-1]) for p in paths),
            time.perf_counter() + WAIT,
            0.2,
        )
        for rep in range(2 * reps):
            mode = "poll" if rep % 4 in (0, 3) else "nudge"  # ABBA
            new = IP(f"10.99.8.{len(backends) + 1}")
            backends.append(new)
            rec = record(SERVICE, vip, 1, backends)
            if mode == "poll":
                time.sleep(rng.uniform(0, programmer.poll_interval))  # a random poll phase
            start = time.perf_counter()
            shared.put(key(rec), rec.to_json())
            if mode == "nudge":
                programmer.nudge()
            deadline = start + WAIT

            def programmed(new: IP = new) -> bool:
                with stamped.lock:
                    got = [stamped.done.get(str(p)) for p in paths]
                return all(g is not None and holds(g[0], fwmark, new) for g in got)

            # Wait on the programmer's own note first (no kernel work, so the measurement
            # does not slow what it measures), then poll read() until every sandbox shows it.
            wait_until("programming", programmed, deadline, 0.005)
            with stamped.lock:
                last_program = max(stamped.done[str(p)][1] for p in paths)
                first_program = min(stamped.began[str(p)][1] for p in paths)
            confirm(paths, fwmark, new, deadline)
            end = time.perf_counter()
            rows[mode].append(
                {
                    "programmed_ms": (last_program - start) * 1000,
                    "read_ms": (end - start) * 1000,
                    # the pass's start (poll phase, reading both stores), then the kernel work
                    "until_first_program_ms": (first_program - start) * 1000,
                    "programming_ms": (last_program - first_program) * 1000,
                }
            )
    finally:
        programmer.close()
        local.close()

    fields = ("programmed_ms", "read_ms", "until_first_program_ms", "programming_ms")
    return {
        "sandboxes": sandboxes,
        "repetitions_each": reps,
        "poll_interval_s": programmer.poll_interval,
        **{
            mode: {field: summary([r[field] for r in rows[mode]]) for field in fields}
            for mode in ("poll", "nudge")
        },
        "read_per_sandbox_ms": summary(read_cost),
        "backends_at_end": len(backends),
        "samples": rows,
    }


# --------------------------------------------------------------------------- 3. scale


def bench_scale(scratch: Scratch, sandboxes: int, services: int, repeats: int) -> dict[str, Any]:
    local = SqliteKV(scratch.root / "scale-local.db")
    shared = MemoryKV()
    paths = join_sandboxes(scratch, local, "s", sandboxes)
    recs = [
        record(
            f"{i:025x}",
            IP(f"10.98.{i // 250}.{i % 250 + 1}"),
            i + 1,
            [IP(f"10.97.{i}.{j}") for j in (1, 2, 3)],
            name=f"svc{i}",
        )
        for i in range(services)
    ]
    for rec in recs:
        shared.put(key(rec), rec.to_json())
    lb = NetlinkLoadBalancer()
    rss_before = vm_rss_kib()
    programmer = LoadBalancing(lb, local, shared, layout=LAYOUT)
    try:
        start = time.perf_counter()
        programmer.sync()
        first = (time.perf_counter() - start) * 1000
        changed: list[float] = []
        unchanged: list[float] = []
        for rep in range(repeats):
            # One backend of one service replaced, then a pass with nothing new.
            rec = recs[0]
            moved = [IP(f"10.97.{services}.{rep + 1}"), *[b.ip for b in rec.backends[1:]]]
            recs[0] = record(rec.service_id, rec.vip, 1, moved, name=rec.name)
            shared.put(key(recs[0]), recs[0].to_json())
            start = time.perf_counter()
            programmer.sync()
            changed.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            programmer.sync()
            unchanged.append((time.perf_counter() - start) * 1000)
        rss_after = vm_rss_kib()
        states = [lb.read(p) for p in paths]
        wanted = sandbox_state([r.virtual_service() for r in recs])
        breakdown = program_breakdown(lb, paths[0], wanted, repeats)
    finally:
        local.close()
    return {
        "sandboxes": sandboxes,
        "services": services,
        "backends_per_service": 3,
        "first_pass_ms": first,
        "first_pass_per_sandbox_ms": first / sandboxes,
        "one_backend_changed_ms": summary(changed),
        "nothing_changed_ms": summary(unchanged),
        "rss_kib": {"before": rss_before, "after": rss_after, "growth": rss_after - rss_before},
        "ipvs_services_per_sandbox": sorted({len(s) for s in states}),
        "ipvs_destinations_per_sandbox": sorted(
            {sum(len(vs.backends) for vs in s) for s in states}
        ),
        "every_sandbox_as_wanted": all(s == wanted for s in states),
        "one_sandbox_ms": breakdown,
        "samples_ms": {"one_backend_changed": changed, "nothing_changed": unchanged},
    }


def program_breakdown(
    lb: NetlinkLoadBalancer, sandbox: Path, state: SandboxState, repeats: int
) -> dict[str, dict[str, float]]:
    """Where one program() of a sandbox holding ``state`` spends its time: the whole call
    with nothing to change, one IPVS dump (services and their destinations), one
    replacement of the nftables table (a fork of nft), one thread entering the namespace."""

    def ipvs_dump() -> None:
        with IPVS() as handle:
            lb_ipvs.read(handle)

    parts: dict[str, Callable[[], object]] = {
        "program_nothing_to_change": lambda: lb.program(sandbox, state),
        "ipvs_dump": lambda: nsfs.run_in(sandbox, ipvs_dump),
        "nft_table_replace": lambda: nsfs.run_in(sandbox, lambda: lb_nft.apply("nft", state)),
        "enter_namespace": lambda: nsfs.run_in(sandbox, lambda: None),
    }
    out = {}
    for name, call in parts.items():
        samples = []
        for _ in range(max(3, repeats)):
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1000)
        out[name] = summary(samples)
    return out


# --------------------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    lines = [
        "| part | metric | p50 | p90 | p99 / max | n | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    path = result.get("path")
    if path:
        for kind, label in (("vip", "VIP:port"), ("direct", "task IP directly")):
            s = path[f"{kind}_us"]
            lines.append(
                f"| 1 | connect + first byte, {label} | {s['p50']:.0f} µs | {s['p90']:.0f} µs "
                f"| {s['p99']:.0f} µs (p99) | {s['n']} | failures {path['failures'][kind]}, "
                f"over 0.5 s {path['slow_over_500ms'][kind]} |"
            )
        lines.append(
            f"| 1 | ratio VIP / direct | {path['ratio_p50']:.2f} | {path['ratio_p90']:.2f} | | | "
            f"VIP spread over backends {path['vip_backend_spread']} |"
        )
    delay = result.get("delay")
    if delay:
        for mode, label in (("poll", "no nudge (1 s poll)"), ("nudge", "nudge()")):
            n = delay["sandboxes"]
            for field, what in (
                ("programmed_ms", f"record written -> program() returned in all {n}"),
                ("read_ms", f"record written -> read() shows it in all {n}"),
                ("until_first_program_ms", "… of which: written -> first program() began"),
                ("programming_ms", "… of which: first program() began -> last returned"),
            ):
                s = delay[mode][field]
                lines.append(
                    f"| 2 | {label}: {what} "
                    f"| {s['p50']:.0f} ms | {s['p90']:.0f} ms | {s['max']:.0f} ms (max) "
                    f"| {s['n']} | |"
                )
        s = delay["read_per_sandbox_ms"]
        lines.append(
            f"| 2 | one read() of a sandbox (before it is programmed) | {s['p50']:.1f} ms | | | | |"
        )
    scale = result.get("scale")
    if scale:
        n, m = scale["services"], scale["sandboxes"]
        lines.append(
            f"| 3 | {n} services x {m} sandboxes: first sync() | {scale['first_pass_ms']:.0f} ms "
            f"| | | 1 | {scale['first_pass_per_sandbox_ms']:.0f} ms per sandbox |"
        )
        for key, what in (
            ("one_backend_changed_ms", "sync() after one backend changed"),
            ("nothing_changed_ms", "sync() with nothing changed"),
        ):
            s = scale[key]
            lines.append(
                f"| 3 | {what} | {s['p50']:.1f} ms | {s['p90']:.1f} ms | {s['max']:.1f} ms (max) "
                f"| {s['n']} | |"
            )
        rss = scale["rss_kib"]
        lines.append(
            f"| 3 | VmRSS before -> after | {rss['before'] / 1024:.1f} MiB | "
            f"{rss['after'] / 1024:.1f} MiB | +{rss['growth'] / 1024:.1f} MiB | | |"
        )
        lines.append(
            f"| 3 | kernel objects per sandbox | {scale['ipvs_services_per_sandbox']} services "
            f"| {scale['ipvs_destinations_per_sandbox']} destinations | | {m} "
            f"| as wanted: {scale['every_sandbox_as_wanted']} |"
        )
        for name, s in scale["one_sandbox_ms"].items():
            lines.append(
                f"| 3 | one sandbox with {n} services: {name.replace('_', ' ')} "
                f"| {s['p50']:.1f} ms | | {s['max']:.1f} ms (max) | {s['n']} | |"
            )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        print("bench.lb_bench needs root (run it under kernel-lab)", file=sys.stderr)
        return 2
    why = NetlinkLoadBalancer().unavailable()
    if why:
        print(f"bench.lb_bench: {why}", file=sys.stderr)
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
