"""A Docker-like lifecycle that can be cut by kill -9 after any store write.

``python -m tests.fault.crashplan STATE_DIR CRASH_AFTER REPLIES`` runs the plan
against a plugin whose store SIGKILLs the process right after its
CRASH_AFTER-th write, appending each reply it got to REPLIES (one JSON line per
step). The test then plays Docker: it restarts the plugin on the same state
directory, re-sends the step that got no reply (as Docker's plugin client
retries a call whose connection broke) and goes on to the end.

Two networks, so that duplicates can show: A with an explicit --subnet, B from
the default pools. The "peak" step reads the allocators while both exist.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from core.layout import StoreLayout
from driver.kernel.fake import FakeKernel
from plugin.app import STORE_ROOT, create_app
from plugin.settings import from_env
from plugin.store.sqlite import SqliteKV

Step = tuple[str, dict[str, Any]]
# A plan yields (path, body) and is sent the reply; "peak" is answered by the driver.
Plan = Generator[Step, Any, None]
LAYOUT = StoreLayout(STORE_ROOT)
NET = {"A": "a" * 25, "B": "b" * 25}
EP = {"A": "1" * 64, "B": "2" * 64}
SETTINGS = {"SCOPE": "local", "VNI_RANGE": "256-300", "DEFAULT_ADDR_POOLS": "10.200.0.0/22"}
GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}


def plan() -> Plan:
    pools: dict[str, Any] = {}
    gws: dict[str, str] = {}
    addrs: dict[str, str] = {}
    for n in ("A", "B"):
        req: dict[str, Any] = {"AddressSpace": "SwarmnetLocal", "Options": {}}
        if n == "A":
            req["Pool"] = "10.50.0.0/24"
        pools[n] = yield "/IpamDriver.RequestPool", req
        pid = pools[n]["PoolID"]
        gws[n] = (yield "/IpamDriver.RequestAddress", {"PoolID": pid, "Options": GATEWAY})[
            "Address"
        ]
        ipv4 = [{"Pool": pools[n]["Pool"], "Gateway": gws[n]}]
        yield "/NetworkDriver.CreateNetwork", {"NetworkID": NET[n], "Options": {}, "IPv4Data": ipv4}
        addrs[n] = (yield "/IpamDriver.RequestAddress", {"PoolID": pid})["Address"]
        ids = {"NetworkID": NET[n], "EndpointID": EP[n]}
        yield "/NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": addrs[n]}}
        yield "/NetworkDriver.Join", {**ids, "SandboxKey": "/x"}
    yield "peak", {}
    for n in ("A", "B"):
        pid = pools[n]["PoolID"]
        ids = {"NetworkID": NET[n], "EndpointID": EP[n]}
        yield "/NetworkDriver.Leave", ids
        yield "/NetworkDriver.DeleteEndpoint", ids
        yield "/IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": addrs[n]}
        yield "/NetworkDriver.DeleteNetwork", {"NetworkID": NET[n]}
        yield "/IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": gws[n]}
        yield "/IpamDriver.ReleasePool", {"PoolID": pid}


def peak(store: SqliteKV) -> dict[str, Any]:
    """What the allocators hold while both networks exist."""
    table = json.loads(store.get(LAYOUT.vni) or b'{"by_network": {}}')["by_network"]
    index = store.get(LAYOUT.ipam_index("local"))
    pools = json.loads(index)["pools"] if index else {}
    return {"vnis": sorted(table.values()), "subnets": sorted(pools)}


class CrashingKV(SqliteKV):
    """SqliteKV that dies by SIGKILL right after its ``crash_after``-th write commits."""

    def __init__(self, path: Path, crash_after: int) -> None:
        super().__init__(path)
        self.writes = 0
        self.crash_after = crash_after

    def _wrote(self) -> None:
        self.writes += 1
        if self.writes == self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def put(self, key: str, value: bytes) -> None:
        super().put(key, value)
        self._wrote()

    def delete(self, key: str) -> None:
        super().delete(key)
        self._wrote()

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        out = super().update(key, fn)
        self._wrote()
        return out


def start(store: SqliteKV) -> Callable[[str, dict[str, Any]], tuple[int, Any]]:
    app = create_app(from_env(SETTINGS), kernel=FakeKernel(), local=store, shared=store)
    client = app.test_client()

    def call(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        resp = client.post(path, data=json.dumps(body).encode())
        return resp.status_code, resp.get_json(force=True, silent=True)

    return call


def run(
    call: Callable[[str, dict[str, Any]], tuple[int, Any]],
    store: SqliteKV,
    done: list[Any],
    record: Callable[[Any], None] = lambda reply: None,
) -> None:
    """Drive the plan: replay the replies in ``done`` without sending, then send the rest."""
    steps = plan()
    reply: Any = None
    for i in range(1000):  # far more than the plan has
        try:
            path, body = steps.send(reply) if i else next(steps)
        except StopIteration:
            return
        if i < len(done):
            reply = done[i]
            continue
        if path == "peak":
            reply = peak(store)
        else:
            status, reply = call(path, body)
            if status != 200:
                raise AssertionError(f"step {i} {path}: {status} {reply}")
        done.append(reply)
        record(reply)
    raise AssertionError("the plan did not end")


def main() -> None:
    state, crash_after, replies = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    store = CrashingKV(state / "store.sqlite", crash_after)
    call = start(store)
    with open(replies, "a") as out:

        def record(reply: Any) -> None:
            out.write(json.dumps(reply) + "\n")
            out.flush()  # in the kernel's hands before the next write can kill us

        run(call, store, [], record)
    print(f"writes={store.writes}")


if __name__ == "__main__":
    main()
