"""Replay the request bodies a real dockerd 20.10 sent (captured by tests/e2e/capture.py).

Every body must decode: a field we do not know must not break us, and a body
dockerd really sends must never be a 400 for its shape. Calls whose
prerequisites (network, endpoint, pool) are not in this fresh plugin may only
fail as "unknown", never with a 5xx.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.conftest import FIXTURES, Plugin, make_plugin

BODIES = sorted(FIXTURES.glob("*.json"))
ORDER = [
    "NetworkDriver.AllocateNetwork",
    "IpamDriver.RequestPool",
    "IpamDriver.RequestAddress",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.Leave",
    "NetworkDriver.DeleteEndpoint",
    "IpamDriver.ReleaseAddress",
    "NetworkDriver.DeleteNetwork",
    "IpamDriver.ReleasePool",
    "NetworkDriver.FreeNetwork",
]


def method_of(path: Path) -> str:
    return ".".join(path.name.split(".")[:2])


def test_fixtures_were_captured() -> None:
    methods = {method_of(p) for p in BODIES}
    assert {
        "NetworkDriver.CreateNetwork",
        "NetworkDriver.Join",
        "IpamDriver.RequestPool",
    } <= methods


@pytest.mark.parametrize("path", BODIES, ids=lambda p: p.name)
def test_every_captured_body_decodes(path: Path) -> None:
    plugin = make_plugin()
    status, reply = plugin.call("/" + method_of(path), json.loads(path.read_text()))
    if status != 200:
        message = (reply or {}).get("Err") or (reply or {}).get("Error") or ""
        assert status == 400 and (
            "unknown" in message or "never issued" in message.lower() or "PoolID" in message
        ), (status, reply)


def case_bodies(case: str) -> list[tuple[str, dict]]:
    found = []
    for method in ORDER:
        path = FIXTURES / f"{method}.{case}.json"
        if path.exists():
            found.append((method, json.loads(path.read_text())))
    return found


@pytest.mark.parametrize("case", ["swarm-service", "swarm-internal", "local-ipam", "swarm-mtu"])
def test_a_captured_case_replays_in_protocol_order(case: str) -> None:
    plugin: Plugin = make_plugin()
    bodies = case_bodies(case)
    assert bodies, case
    for method, body in bodies:
        if method == "NetworkDriver.CreateEndpoint":
            # Make sure the network exists even when its CreateNetwork was captured under
            # another case name: create it from the endpoint's NetworkID.
            plugin.call(
                "/NetworkDriver.CreateNetwork",
                {"NetworkID": body["NetworkID"], "Options": {}, "IPv4Data": []},
            )
        status, reply = plugin.call("/" + method, body)
        assert status == 200, (method, reply)
