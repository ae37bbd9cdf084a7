"""Bad input: every malformed request is a bounded 4xx, never a 5xx or a traceback.

The fuzzer starts from the bodies a real dockerd sent (tests/unit/fixtures) and
breaks them: fields replaced by any JSON value, dropped, made huge, nested deep,
or the body replaced by bytes. Every example goes to one long-lived plugin, so
later examples also meet the state earlier ones left.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driver import names
from plugin.app import MAX_BODY
from plugin.errors import MAX_MESSAGE
from tests.unit.conftest import FIXTURES, Plugin, make_plugin

BODIES = sorted(FIXTURES.glob("*.json"))
NET = "q1w2e3r4t5y6u7i8o9p0asdfg"
EP = "e" * 64
# An error message longer than this quotes too much of the request.
MESSAGE_LIMIT = MAX_MESSAGE + 40

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def route(path: Path) -> str:
    return "/" + ".".join(path.name.split(".")[:2])


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a field of a JSON document."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out += paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((*prefix, i))
            out += paths_of(v, (*prefix, i))
    return out


def with_field(doc: Any, path: tuple[Any, ...], value: Any, drop: bool) -> Any:
    doc = json.loads(json.dumps(doc))
    target = doc
    for step in path[:-1]:
        target = target[step]
    if drop and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    source = draw(st.sampled_from(BODIES))
    doc = json.loads(source.read_text())
    kind = draw(st.sampled_from(["field", "drop", "huge", "deep", "bytes", "root", "as-is"]))
    if kind == "bytes":
        return route(source), draw(st.binary(max_size=200))
    if kind == "root":
        return route(source), json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.integers(10, 200_000))
        return route(source), b"[" * depth + b"]" * draw(st.sampled_from([0, depth]))
    fields = paths_of(doc)
    if kind == "as-is" or not fields:
        return route(source), json.dumps(doc).encode()
    path = draw(st.sampled_from(fields))
    if kind == "huge":
        value: Any = draw(st.sampled_from(["x", "1", NET[:12], "::/0"])) * 200_000
    else:
        value = draw(json_values)
    return route(source), json.dumps(with_field(doc, path, value, kind == "drop")).encode()


class Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.count += 1


@pytest.fixture(scope="module")
def fuzzed() -> Any:
    plugin = make_plugin({"SCOPE": "local"})
    tracebacks = Tracebacks()
    logging.getLogger().addHandler(tracebacks)
    stats: Counter[int] = Counter()
    try:
        yield plugin, stats, tracebacks
    finally:
        logging.getLogger().removeHandler(tracebacks)
        print(f"\nfuzzed requests by status: {dict(sorted(stats.items()))}; "
              f"tracebacks logged: {tracebacks.count}")


@settings(max_examples=1500, suppress_health_check=list(HealthCheck), database=None)
@given(requests())
def test_fuzzed_requests_get_no_5xx_and_a_bounded_reply(
    fuzzed: tuple[Plugin, Counter[int], Tracebacks], request: tuple[str, bytes]
) -> None:
    plugin, stats, tracebacks = fuzzed
    path, raw = request
    status, reply = plugin.call(path, raw=raw)
    stats[status] += 1
    assert status < 500, (path, raw[:200], reply)
    for key in ("Err", "Error"):
        message = (reply or {}).get(key) or ""
        assert len(message) <= MESSAGE_LIMIT, (path, raw[:200], message[:200], len(message))
    assert tracebacks.count == 0


def test_the_fuzzer_saw_every_route_and_both_outcomes(
    fuzzed: tuple[Plugin, Counter[int], Tracebacks],
) -> None:
    _, stats, tracebacks = fuzzed
    assert stats[200] > 0 and stats[400] > 0, stats
    assert sum(stats.values()) >= 1000, stats
    assert tracebacks.count == 0


# -- the reviewer's cases, one by one ---------------------------------------------


@pytest.fixture
def plugin() -> Plugin:
    return make_plugin()


@pytest.mark.parametrize(
    "path",
    ["/NetworkDriver.CreateNetwork", "/IpamDriver.RequestPool", "/NetworkDriver.DiscoverNew"],
)
def test_deeply_nested_json_is_a_400(plugin: Plugin, path: str) -> None:
    status, reply = plugin.call(path, raw=b"[" * 100_000)
    assert status == 400, reply
    assert "nests deeper" in json.dumps(reply)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/IpamDriver.ReleaseAddress", {"PoolID": "x", "Address": ""}, "Address"),
        (
            "/NetworkDriver.DiscoverNew",
            {"DiscoveryType": 1, "DiscoveryData": {"Address": "", "Self": True}},
            "DiscoveryData.Address",
        ),
        (
            "/NetworkDriver.DiscoverDelete",
            {"DiscoveryType": 1, "DiscoveryData": {"Address": ""}},
            "DiscoveryData.Address",
        ),
    ],
)
def test_an_empty_required_address_is_a_400_naming_it(
    plugin: Plugin, path: str, body: dict[str, Any], field: str
) -> None:
    status, reply = plugin.call(path, body)
    assert status == 400, reply
    message = reply.get("Err") or reply.get("Error")
    assert message.startswith(f"{field}: missing") or f"{field}: missing" in message, reply


def test_a_10_mb_network_id_gets_a_short_reply(
    plugin: Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    huge = "x" * (10 * 1024 * 1024 - 100)
    status, reply = plugin.call("/NetworkDriver.DeleteNetwork", {"NetworkID": huge})
    assert status == 413, reply  # past the body limit: never even parsed
    status, reply = plugin.call("/NetworkDriver.DeleteNetwork", {"NetworkID": "x" * 500_000})
    assert status == 400, reply
    assert len(reply["Err"]) < 300, len(reply["Err"])
    assert max(len(r.getMessage()) for r in caplog.records) < 5000


def test_a_body_over_the_limit_is_a_413(plugin: Plugin) -> None:
    status, reply = plugin.call("/IpamDriver.RequestPool", raw=b" " * (MAX_BODY + 1))
    assert status == 413, reply
    assert set(reply) == {"Error", "Err"} and len(reply["Err"]) < 300


def test_an_unknown_route_with_a_huge_path_is_a_short_404(plugin: Plugin) -> None:
    resp = plugin.client.post("/" + "A" * 100_000, data=b"")
    assert resp.status_code == 404
    assert len(resp.get_data()) < 500


def test_an_id_with_a_trailing_newline_is_refused(plugin: Plugin) -> None:
    assert not names.is_object_id(NET + "\n")
    status, reply = plugin.call("/NetworkDriver.CreateNetwork", {"NetworkID": NET + "\n"})
    assert status == 400 and "NetworkID" in reply["Err"], reply
    assert plugin.kernel.networks == {}


def test_a_second_network_with_the_same_kernel_name_is_a_409(plugin: Plugin) -> None:
    first = {"NetworkID": NET, "Options": {}, "IPv4Data": [{"Pool": "10.9.0.0/24"}]}
    other = NET[:12] + "Z" * 13
    plugin.ok("/NetworkDriver.CreateNetwork", first)
    before = dict(plugin.store.data)
    status, reply = plugin.call("/NetworkDriver.CreateNetwork", {**first, "NetworkID": other})
    assert status == 409, reply
    assert NET[:12] in reply["Err"] and "12 characters" in reply["Err"]
    assert plugin.store.data == before
    # Deleting the refused one leaves the first network's namespace alone.
    plugin.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": other})
    assert set(plugin.kernel.networks) == {NET[:12]}


def test_a_second_endpoint_with_the_same_veth_name_is_a_409(plugin: Plugin) -> None:
    plugin.ok(
        "/NetworkDriver.CreateNetwork",
        {"NetworkID": NET, "Options": {}, "IPv4Data": [{"Pool": "10.9.0.0/24"}]},
    )
    ep = {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.9.0.2/24"}}
    plugin.ok("/NetworkDriver.CreateEndpoint", ep)
    plugin.ok("/NetworkDriver.CreateEndpoint", ep)  # a retry is fine
    clash = {**ep, "EndpointID": EP[:12] + "f" * 52, "Interface": {"Address": "10.9.0.3/24"}}
    status, reply = plugin.call("/NetworkDriver.CreateEndpoint", clash)
    assert status == 409 and "12 characters" in reply["Err"], reply


@pytest.mark.parametrize("address", ["224.0.0.1", "0.0.0.0", "255.255.255.255", "::", "ff02::1"])
def test_discover_new_refuses_a_non_unicast_vtep_and_stores_nothing(
    plugin: Plugin, address: str
) -> None:
    before = dict(plugin.store.data)
    status, reply = plugin.call(
        "/NetworkDriver.DiscoverNew",
        {"DiscoveryType": 1, "DiscoveryData": {"Address": address, "Self": True}},
    )
    assert status == 400 and "DiscoveryData.Address" in reply["Err"], reply
    assert plugin.store.data == before
    # Networks can still be made.
    plugin.ok(
        "/NetworkDriver.CreateNetwork",
        {"NetworkID": NET, "Options": {}, "IPv4Data": [{"Pool": "10.9.0.0/24"}]},
    )


@pytest.mark.parametrize(
    "gateway", ["::/0", "0.0.0.0/24", "10.8.0.1/24", "224.0.0.1/24", "10.9.0.0.1/24"]
)
def test_a_refused_create_network_again_changes_nothing(plugin: Plugin, gateway: str) -> None:
    good = {
        "NetworkID": NET,
        "Options": {},
        "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}],
    }
    plugin.ok("/NetworkDriver.CreateNetwork", good)
    before_store = dict(plugin.store.data)
    before_kernel = plugin.kernel.networks[NET[:12]].spec
    bad = {**good, "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": gateway}]}
    status, reply = plugin.call("/NetworkDriver.CreateNetwork", bad)
    assert status == 400 and "Gateway" in reply["Err"], reply
    assert plugin.store.data == before_store
    assert plugin.kernel.networks[NET[:12]].spec == before_kernel


def test_a_create_network_the_kernel_refuses_restores_the_existing_network(
    plugin: Plugin,
) -> None:
    good = {
        "NetworkID": NET,
        "Options": {},
        "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}],
    }
    plugin.ok("/NetworkDriver.CreateNetwork", good)
    before_store = dict(plugin.store.data)
    before_kernel = plugin.kernel.networks[NET[:12]].spec
    from driver.kernel.port import KernelError

    plugin.kernel.fail_next["ensure_network"] = KernelError("refused for the test")
    changed = {**good, "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.2/24"}]}
    status, _ = plugin.call("/NetworkDriver.CreateNetwork", changed)
    assert status == 500
    # The network is still there (not removed by the undo), as it was.
    assert plugin.store.data == before_store
    assert plugin.kernel.networks[NET[:12]].spec == before_kernel
