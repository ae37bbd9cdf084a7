"""The scale simulator's GC pauses (issue 16): what a host process records from
``gc.callbacks``, and what the bench makes of two samples of it."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.scale_sim.cluster import Sample, gc_between
from bench.scale_sim.etcdstats import Metrics
from testbed.scalesim.gcpauses import GcPauses
from testbed.scalesim.host import Host


@pytest.fixture
def pauses() -> Iterator[GcPauses]:
    p = GcPauses()
    p.install()
    yield p
    p.uninstall()


def test_every_collection_is_counted_by_generation_with_its_pause(pauses: GcPauses) -> None:
    before = time.time()
    garbage: list[Any] = [[] for _ in range(200_000)]
    for item in garbage:
        item.append(garbage)  # cycles: only the collector frees them
    del garbage, item
    gc.collect(0)
    gc.collect(2)
    after = time.time()
    by_gen = pauses.snapshot()["by_gen"]
    assert by_gen[0][0] >= 1 and by_gen[2][0] >= 1
    _, total, longest = by_gen[2]
    assert 0 < longest <= total
    mine = [p for p in pauses.snapshot()["gen2_pauses"] if p[0] >= before]
    assert mine
    end, took = mine[-1]
    assert end <= after and took <= after - before


def test_gc_freeze_exempts_what_survives_a_collection() -> None:
    try:
        reply = Host().gc_freeze({})
        assert reply["frozen"] > 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_gc_off_stops_automatic_collection() -> None:
    try:
        assert Host().gc_off({}) == {"enabled": False}
        assert not gc.isenabled()
    finally:
        gc.enable()


def sample(wall: float, gens: list[list[float]], gen2: list[list[float]]) -> Sample:
    host = {"wall": wall, "gc": {"by_gen": gens, "gen2_pauses": gen2}}
    return Sample(wall, 0.0, 0, Metrics(0, 0, 0, {}, 0, 0), [host])


def test_a_phase_gets_its_own_gc_time_and_longest_gen2_pause() -> None:
    early = [100.5, 3.0]  # before the phase: not its longest
    a = sample(101.0, [[10, 0.1, 0.01], [2, 0.1, 0.05], [1, 3.0, 3.0]], [early])
    b = sample(111.0, [[30, 0.3, 0.01], [4, 0.2, 0.05], [3, 4.5, 3.0]],
               [early, [104.0, 1.0], [109.0, 0.5]])  # fmt: skip
    got = gc_between(a, b)
    assert got["gc_seconds"] == 10
    assert got["gc_s"] == pytest.approx(0.2 + 0.1 + 1.5)
    assert got["gc_cores"] == pytest.approx(1.8 / 10)
    assert got["gc_gen2_count"] == 2
    assert got["gc_gen2_s"] == pytest.approx(1.5)
    assert got["gc_gen2_max_s"] == 1.0
