"""What a real dockerd 20.10 swarm manager answered (data/, see data/README.md), and a
``ServiceView`` that replays it.

The files are what ``plugin.swarmview.SwarmView`` returned from that dockerd, so the
fake view below returns exactly what the real one did in each phase: that capture is
its contract (data/capture.py checks the real view's ``is_manager`` and event wait on
the way).
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
PLUGIN_DRIVER = "swarmnet-overlay:latest"

# The capture's objects (data/networks.json, data/services-1-running.json).
LBNET1 = "xbre2mcrnc93ywbxrwrsh3l2c"
LBNET2 = "p7htobrtkx91cedsbrxvv83ch"
INGRESS = "g826nnici8v7nudk4diegy3r9"
WEB = "t8uf40zn58gmsm68vl57psr6t"  # vip, 3 replicas on lbnet1, then scaled to 1
RR = "nmj8d1chel5ukqmx250zprh28"  # dnsrr, 2 replicas on lbnet1
PUB = "rqlyjdc26nczg7fr2lc5jfmfv"  # vip, lbnet1 + lbnet2 + ingress (--publish), then removed

# running: 7 tasks up. draining: web scaled 3 -> 1, two of its tasks still running with
# desired state "remove". scaled: those two are down. removed: pub removed, its two tasks
# still running with desired state "remove".
PHASES = ("1-running", "2-draining", "3-scaled", "4-removed")


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def services(phase: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = load(f"services-{phase}.json")
    return result


def tasks(phase: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = load(f"tasks-{phase}.json")
    return result


def our_networks() -> set[str]:
    """The networks of our driver, as dockerd lists them."""
    return {n["Id"] for n in load("networks.json") if n["Driver"] == PLUGIN_DRIVER}


class ViewDown(Exception):
    """What a failing dockerd looks like to the collector."""


class FakeView:
    """A ``ServiceView`` replaying one captured phase; tests switch phases and failures."""

    def __init__(self, phase: str = "1-running", manager: bool = True) -> None:
        self.manager = manager
        self.failing: str | None = None  # "info", "services", "tasks", "nodes": that call fails
        self.down: set[str] = set()  # node IDs the managers see as down
        self.closed = False
        self._changed = threading.Event()
        self.set_phase(phase)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._services = services(phase)
        self._tasks = tasks(phase)
        self._changed.set()  # as dockerd sends a service event

    def _check(self, call: str) -> None:
        if self.closed:
            raise ViewDown("closed")
        if self.failing == call:
            raise ViewDown(f"{call}: dockerd answered 500")

    def is_manager(self) -> bool:
        self._check("info")
        return self.manager

    def services(self) -> list[dict[str, Any]]:
        self._check("services")
        return copy.deepcopy(self._services)

    def tasks(self) -> list[dict[str, Any]]:
        self._check("tasks")
        return copy.deepcopy(self._tasks)

    def nodes(self) -> list[dict[str, Any]]:
        """The nodes the captured tasks ran on, ready unless a test put them in ``down``."""
        self._check("nodes")
        ids = sorted({t["NodeID"] for t in self._tasks if t.get("NodeID")})
        return [
            {"ID": i, "Status": {"State": "down" if i in self.down else "ready"}} for i in ids
        ]

    def wait_for_change(self, timeout: float) -> bool:
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed and not self.closed

    def close(self) -> None:
        self.closed = True
        self._changed.set()
