"""Part 2, ``delay``: from a service record written to every sandbox programmed.

N client sandboxes joined to one network (endpoint records with ``joined`` and
``sandbox_key`` in a local SQLite store), the real programmer
(``driver.lb.programmer.LoadBalancing``) with its thread and the real adapter, and a service
record in the shared store (a MemoryKV: no etcd round trip). Each repetition writes the record
with one more backend and waits until every sandbox holds it: once without ``nudge()`` (the
1 s poll is part of the delay; the write lands at a random phase of it) and once with
``nudge()`` (the programming alone), in turn.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.lb.scratch import Scratch
from bench.lb.services import LAYOUT, holds, join_sandboxes, key, record
from bench.lb.stats import summary
from driver.kernel.lb import NetlinkLoadBalancer
from driver.lb.model import SandboxState, mark
from driver.lb.programmer import LoadBalancing
from plugin.store.memory import MemoryKV
from plugin.store.sqlite import SqliteKV

IP = ipaddress.IPv4Address
SERVICE = "5e12" * 6 + "5e"
WAIT = 120.0  # seconds; bounds every wait for the programmer


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
