"""Concurrent requests never hand out the same address or subnet twice.

Threads share one service (the server's request threads), processes share one SQLite
file (two plugin processes, or two managers on one store).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import TypeVar

import pytest

from ipam.errors import Exhausted, PoolOverlap
from ipam.store_port import KV
from tests.unit.ipam.fakes import CasKV
from tests.unit.ipam.helpers import GLOBAL, SERIAL, address, pool, service

T = TypeVar("T")
THREADS = 8


def run_threads(n: int, work: Callable[[], list[T]]) -> list[T]:
    barrier = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            barrier.wait()
            got = work()
            with lock:
                results.extend(got)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    return results


@pytest.fixture(params=["cas", "sqlite"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KV]:
    if request.param == "cas":
        yield CasKV()
        return
    sqlite = pytest.importorskip("plugin.store.sqlite")
    store = sqlite.SqliteKV(tmp_path / "kv.db")
    yield store
    store.close()


def test_threads_never_get_the_same_address(kv: KV) -> None:
    svc = service(shared=kv)
    pid = pool(svc, "10.1.0.0/24")

    def work() -> list[str]:
        return [address(svc, pid, options=SERIAL if i % 2 else None) for i in range(15)]

    got = run_threads(THREADS, work)
    assert len(got) == THREADS * 15
    assert len(set(got)) == len(got)


def test_threads_never_get_overlapping_subnets(kv: KV) -> None:
    svc = service("10.16.0.0/20", shared=kv)

    def work() -> list[str]:
        return [pool(svc) for _ in range(2)]

    got = run_threads(THREADS, work)
    assert len(set(got)) == len(got) == THREADS * 2
    nets = [ip_network(pid.split("/", 1)[1]) for pid in got]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[:i])
    # Dynamic order holds under contention: the 16 first /24s, each once.
    assert sorted(nets) == [ip_network(f"10.16.{i}.0/24") for i in range(THREADS * 2)]


def test_threads_racing_explicit_and_dynamic_pools_never_overlap(kv: KV) -> None:
    svc = service("10.16.0.0/22", shared=kv)
    explicit = ["10.16.0.0/23", "10.16.1.0/24", "10.16.2.0/25", "10.16.3.0/24"]
    turn = iter(range(THREADS))
    lock = threading.Lock()

    def work() -> list[str]:
        with lock:
            me = next(turn)
        out = []
        for subnet in explicit[me % 4 :] + explicit[: me % 4]:
            if me % 2:
                with contextlib.suppress(Exhausted):
                    out.append(pool(svc))
            with contextlib.suppress(PoolOverlap):
                out.append(pool(svc, subnet))
        return out

    got = set(run_threads(THREADS, work))
    nets = [ip_network(pid.split("/", 1)[1]) for pid in got]
    assert nets
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[:i])


def _allocate_in_child(
    path: str, pid: str, count: int, queue: multiprocessing.Queue[object]
) -> None:
    try:
        from plugin.store.sqlite import SqliteKV

        kv = SqliteKV(Path(path))
        svc = service("10.10.0.0/21", shared=kv)
        out = [address(svc, pid, options=SERIAL) for _ in range(count)]
        out += [pool(svc) for _ in range(3)]
        kv.close()
        queue.put(out)
    except BaseException as e:
        queue.put(repr(e))


def test_two_processes_on_one_sqlite_store_never_collide(tmp_path: Path) -> None:
    sqlite = pytest.importorskip("plugin.store.sqlite")
    path = tmp_path / "kv.db"
    kv = sqlite.SqliteKV(path)
    pid = pool(service("10.10.0.0/21", shared=kv), "10.1.0.0/24")
    kv.close()

    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[object] = ctx.Queue()
    procs = [
        ctx.Process(target=_allocate_in_child, args=(str(path), pid, 60, queue)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    lists = [r for r in results if isinstance(r, list)]
    assert len(lists) == len(results), results
    got = [str(x) for r in lists for x in r]
    assert len(got) == 2 * 63
    assert len(set(got)) == len(got)
    assert sorted(g for g in got if g.startswith(GLOBAL)) == [
        f"{GLOBAL}/10.10.{i}.0/24" for i in range(6)
    ]


def test_racing_releases_and_requests_in_a_full_pool() -> None:
    svc = service(shared=CasKV(spurious_conflicts=1))
    pid = pool(svc, "10.1.0.0/28")  # 14 usable addresses
    for _ in range(14):
        address(svc, pid)
    counter = iter(range(1, 8))
    lock = threading.Lock()

    def work() -> list[str]:
        with lock:
            n = next(counter)
        svc.release_address(pid, ip_address(f"10.1.0.{n}"))
        return [address(svc, pid)]

    got = run_threads(7, work)
    assert sorted(got, key=lambda a: ip_address(a.split("/")[0])) == [
        f"10.1.0.{n}/28" for n in range(1, 8)
    ]
    with pytest.raises(Exhausted):
        address(svc, pid)
