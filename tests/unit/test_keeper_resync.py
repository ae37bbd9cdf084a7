"""The keeper's periodic resync starts at a random phase, so nodes that start together do
not all diff their networks at the same moments (issue 16)."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest

from core.layout import StoreLayout
from plugin.controlplane import keeper as keeper_module
from plugin.controlplane.keeper import Keeper
from plugin.controlplane.outbox import Outbox
from plugin.controlplane.watcher import PeerWatcher
from plugin.store.etcd import EtcdKV, StoreUnavailable

TTL = 30  # keepalive rounds, and retries after a failed round, every 10 s


class UnreachableKV:
    def call(self, fn: Any) -> Any:
        raise StoreUnavailable("etcd: not here (test)")


class ResyncTimes:
    """The watcher port as the keeper uses it; notes when each resync came."""

    def __init__(self, stop: threading.Event, wanted: int) -> None:
        self.times: list[float] = []
        self._stop, self._wanted = stop, wanted

    def resync(self) -> None:
        self.times.append(time.monotonic())
        if len(self.times) == self._wanted:
            self._stop.set()

    def close_stream(self) -> None:
        return None


def test_the_first_resync_falls_at_the_keepers_phase_then_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    interval = 0.4
    monkeypatch.setattr(keeper_module, "RESYNC_INTERVAL", interval)
    stop = threading.Event()
    watcher = ResyncTimes(stop, wanted=2)
    keeper = Keeper(
        cast(EtcdKV, UnreachableKV()), StoreLayout("/swarmnet"), "n1", TTL, Outbox(),
        cast(PeerWatcher, watcher), stop, phase=lambda: 0.5,
    )  # fmt: skip
    start = time.monotonic()
    thread = threading.Thread(target=keeper.run, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the keeper waited for its keepalive round to resync"
    first, second = watcher.times
    assert first - start >= 0.5 * interval
    assert second - first >= interval
    assert second - start < TTL / 3  # each came at its time, not at a keepalive round
