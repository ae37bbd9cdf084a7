"""kill -9 after every store write of a Docker-like lifecycle, then restart and finish it.

After each crash the plugin starts again on the same SQLite file, Docker
re-sends the call that got no reply, and the lifecycle runs to its end. Then
nothing may be left: no network or endpoint record, no VNI, no subnet, no pool
record. While both networks exist, no VNI or subnet may be held twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugin.store.sqlite import SqliteKV
from tests.fault import crashplan

ROOT = Path(__file__).resolve().parents[2]


def child(state: Path, crash_after: int, replies: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.fault.crashplan", str(state), str(crash_after), str(replies)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def leftovers(store: SqliteKV) -> dict[str, list[str]]:
    out = {
        "networks and endpoints": sorted(store.list("/swarmnet/v1/local/networks")),
        "endpoint records": sorted(store.list("/swarmnet/v1/local/endpoints")),
        "pool records": sorted(store.list("/swarmnet/v1/ipam/")),
    }
    peak = crashplan.peak(store)
    out["vnis"] = [str(v) for v in peak["vnis"]]
    out["subnets"] = peak["subnets"]
    # The index record itself may stay (empty); the pool records may not.
    out["pool records"] = [k for k in out["pool records"] if not k.endswith("/index")]
    return {k: v for k, v in out.items() if v}


@pytest.fixture(scope="module")
def total_writes(tmp_path_factory: pytest.TempPathFactory) -> int:
    """How many writes the whole plan makes when nothing crashes."""
    tmp = tmp_path_factory.mktemp("nocrash")
    done = child(tmp, 0, tmp / "replies")
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().rsplit("writes=", 1)[1])


def test_kill_9_after_every_write_leaks_and_duplicates_nothing(
    total_writes: int, tmp_path: Path
) -> None:
    assert 20 <= total_writes <= 200, total_writes
    outcomes: dict[str, int] = {"crashes": 0, "duplicates": 0, "leaks": 0}
    for n in range(1, total_writes + 1):
        state = tmp_path / f"crash{n}"
        state.mkdir()
        replies = state / "replies"
        done = child(state, n, replies)
        assert done.returncode == -9, (n, done.returncode, done.stderr[-3000:])
        outcomes["crashes"] += 1
        got: list[Any] = [json.loads(line) for line in replies.read_text().splitlines()]
        store = SqliteKV(state / "store.sqlite")
        try:
            call = crashplan.start(store)  # restart: reconcile and sweeps run here
            finished: list[Any] = list(got)
            crashplan.run(call, store, finished)
            peak = next(r for r in finished if isinstance(r, dict) and "vnis" in r)
            if len(set(peak["vnis"])) != len(peak["vnis"]) or len(set(peak["subnets"])) != len(
                peak["subnets"]
            ):
                outcomes["duplicates"] += 1
            assert len(peak["vnis"]) == 2 and len(peak["subnets"]) == 2, (n, peak)
            left = leftovers(store)
            if left:
                outcomes["leaks"] += 1
            assert not left, (n, len(got), left)
        finally:
            store.close()
    print(f"\nkill -9 after each of {total_writes} writes: {outcomes}")
    assert outcomes == {"crashes": total_writes, "duplicates": 0, "leaks": 0}

