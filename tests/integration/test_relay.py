"""The watch relay (``swarmnet relay``, issue 16) in its own process, between a real etcd and
nodes (driver services on fake kernels) that follow the peers through it."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from driver.kernel.port import Peer
from plugin.controlplane import gateway
from plugin.relay.feed import HEARTBEAT, IDLE_TIMEOUT
from plugin.store.etcd import EtcdKV, EtcdTLS, StoreUnavailable, b64, prefix_end
from testbed.etcdserver import EtcdServer
from testbed.relay import RelayServer, make_pki, relay_server
from tests.integration.test_control_plane import (
    NET,
    TTL,
    Node,
    make_node,
    network_on,
    start_endpoint,
    wait_for,
)

PEERS = "/swarmnet/v1/peers/"


@pytest.fixture
def relay(etcd: EtcdServer) -> Iterator[RelayServer]:
    with relay_server(etcd.url) as server:
        yield server


def post(url: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def close_all(nodes: list[Node]) -> None:
    for n in nodes:
        n.control.close()


@contextmanager
def following(
    etcd: EtcdServer, relays: tuple[str, ...], tls: EtcdTLS | None = None
) -> Iterator[tuple[Node, Node, Peer]]:
    """A writer (on etcd) and a follower (through ``relays``) that has learned the writer's
    first endpoint, which is yielded with them; both closed on the way out."""
    writer = make_node(etcd, "192.0.2.1")
    follower = make_node(etcd, "192.0.2.2", relays=relays, relay_tls=tls)
    try:
        network_on(writer)
        network_on(follower)
        a = start_endpoint(writer, "a" * 64, "10.20.0.2")
        wait_for(lambda: follower.peers() == {a}, what="the follower to learn the endpoint")
        yield writer, follower, a
    finally:
        close_all([writer, follower])


def test_the_relay_lists_the_prefix_as_etcd_does(etcd: EtcdServer, relay: RelayServer) -> None:
    kv = EtcdKV([etcd.url])
    for i in range(5):
        kv.put(f"{PEERS}{NET}/{i:064x}", json.dumps({"i": i}).encode())
    kv.put("/swarmnet/v1/vni", b"not a peer")
    direct = gateway.list_prefix(kv, PEERS)
    # The relay's revision is its last peer event's: the later write outside the prefix
    # moved etcd's on.
    wait_for(
        lambda: gateway.list_prefix(EtcdKV([relay.url]), PEERS)["header"]["revision"]
        == str(int(direct["header"]["revision"]) - 1),
        what="the relay to catch up",
    )
    relayed = gateway.list_prefix(EtcdKV([relay.url]), PEERS)
    assert relayed["kvs"] == direct["kvs"]
    assert len(relayed["kvs"]) == 5


def test_nodes_following_a_relay_learn_and_forget_endpoints(
    etcd: EtcdServer, relay: RelayServer
) -> None:
    direct = make_node(etcd, "192.0.2.1")
    relayed = [make_node(etcd, f"192.0.2.{i}", relays=(relay.url,)) for i in (2, 3)]
    try:
        for n in (direct, *relayed):
            network_on(n)
        a = start_endpoint(direct, "a" * 64, "10.20.0.2")
        b = start_endpoint(relayed[0], "b" * 64, "10.20.0.3")
        wait_for(lambda: relayed[1].peers() == {a, b}, what="node 3 to learn both via the relay")
        wait_for(lambda: relayed[0].peers() == {a}, what="node 2 to learn node 1's endpoint")
        wait_for(lambda: direct.peers() == {b}, what="node 1 (direct) to learn node 2's")

        relayed[0].plugin.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": "b" * 64})
        wait_for(lambda: relayed[1].peers() == {a}, what="the left endpoint to go via the relay")
        direct.control.close()  # killed: its lease lapses
        wait_for(lambda: relayed[1].peers() == set(), timeout=TTL * 3 + 5, what="lease expiry")
    finally:
        close_all([direct, *relayed])


def test_a_relay_restart_ends_with_its_nodes_converged(
    etcd: EtcdServer, relay: RelayServer
) -> None:
    with following(etcd, (relay.url,)) as (writer, follower, a):
        relay.stop()
        b = start_endpoint(writer, "b" * 64, "10.20.0.3")
        writer.plugin.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": "a" * 64})
        assert writer.control.flush()
        assert follower.peers() == {a}  # the data path keeps what it had
        relay.start()
        wait_for(lambda: follower.peers() == {b}, timeout=20, what="convergence after restart")


def test_nodes_move_to_the_next_relay_when_theirs_stops(etcd: EtcdServer) -> None:
    with (
        relay_server(etcd.url) as first,
        relay_server(etcd.url) as second,
        following(etcd, (first.url, second.url)) as (writer, follower, a),
    ):
        first.stop()
        b = start_endpoint(writer, "b" * 64, "10.20.0.3")
        wait_for(lambda: follower.peers() == {a, b}, timeout=20, what="the second relay")


def test_an_etcd_outage_makes_the_relay_refuse_and_recover(
    etcd: EtcdServer, relay: RelayServer
) -> None:
    with following(etcd, (relay.url,)) as (writer, follower, a):
        etcd.stop()
        wait_for(lambda: post(f"{relay.url}/health", b"", "GET")[0] == 503, what="503 health")
        range_req = json.dumps({"key": b64(PEERS), "range_end": b64(prefix_end(PEERS))})
        status, body = post(f"{relay.url}/v3/kv/range", range_req.encode())
        assert status == 503 and "etcd is out of reach" in str(body["error"])
        assert follower.peers() == {a}
        b = start_endpoint(writer, "b" * 64, "10.20.0.3")
        etcd.start()
        wait_for(lambda: follower.peers() == {a, b}, timeout=30, what="recovery after etcd")


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v3/kv/range", b'{"key": "Lw==", "range_end": "MA=="}', 400, "key, range_end"),
        ("/v3/kv/range", b"{not json", 400, "body: not JSON"),
        ("/v3/kv/range", b"[1]", 400, "body: not a JSON object"),
        ("/v3/kv/put", b'{"key": "Lw==", "value": "MA=="}', 404, "serves only range and watch"),
        ("/v3/watch", b'{"cancel_request": {"watch_id": 1}}', 400, "create_request: missing"),
        ("/v3/watch", json.dumps({"create_request": {"key": b64(PEERS), "range_end":
         b64(prefix_end(PEERS)), "prev_kv": True}}).encode(), 400, "create_request.prev_kv"),
        ("/v3/watch", json.dumps({"create_request": {"key": b64(PEERS), "range_end":
         b64(prefix_end(PEERS)), "start_revision": "x"}}).encode(), 400, "start_revision"),
        ("/v3/kv/range", b"x" * 70_000, 413, "content-length"),
        ("/v3/kv/range", b"[" * 60_000, 400, "nested too deep"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_naming_the_field(
    etcd: EtcdServer, relay: RelayServer, path: str, body: bytes, status: int, says: str
) -> None:
    got, reply = post(relay.url + path, body)
    assert got == status
    assert says in str(reply["error"]) and len(str(reply["error"])) < 300
    # Refused, nothing changed: the relay still serves.
    assert gateway.list_prefix(EtcdKV([relay.url]), PEERS)["header"]["revision"]


def test_a_watch_from_before_the_relays_copy_is_told_to_list_again(
    etcd: EtcdServer, relay: RelayServer
) -> None:
    kv = EtcdKV([etcd.url])
    kv.put(f"{PEERS}{NET}/{'a' * 64}", b"{}")
    # The fresh relay's copy starts after that put.
    with relay_server(etcd.url) as fresh, pytest.raises(RuntimeError, match="compacted"):
        for _ in gateway.WatchStream(EtcdKV([fresh.url]), PEERS, 1):
            pass


def test_a_watch_from_a_later_revision_gets_only_what_it_lacks(
    etcd: EtcdServer, relay: RelayServer
) -> None:
    kv = EtcdKV([etcd.url])
    start = int(gateway.list_prefix(kv, PEERS)["header"]["revision"])
    for i in range(3):
        kv.put(f"{PEERS}{NET}/{i:064x}", b"{}")
    last = start + 3
    wait_for(
        lambda: int(gateway.list_prefix(EtcdKV([relay.url]), PEERS)["header"]["revision"]) == last,
        what="the relay to have all three",
    )
    seen = []
    for result, _ in gateway.WatchStream(EtcdKV([relay.url]), PEERS, last):
        seen += [base64.b64decode(e["kv"]["key"]).decode() for e in result.get("events", [])]
        if seen:
            break
    assert seen == [f"{PEERS}{NET}/{2:064x}"]


def test_a_tls_relay_serves_only_nodes_with_a_certificate(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    tls = EtcdTLS(ca=pki.ca, cert=pki.cert("client"), key=pki.key("client"))
    with relay_server(etcd.url, pki=pki) as relay:
        with following(etcd, (relay.url,), tls):
            pass  # the follower learned the writer's endpoint over TLS
        # No client certificate: refused (with TLS 1.3 the client learns it as a reset).
        with pytest.raises(StoreUnavailable):
            gateway.list_prefix(EtcdKV([relay.url], EtcdTLS(ca=pki.ca)), PEERS)


def test_a_relay_that_goes_silent_is_left_for_the_next(etcd: EtcdServer) -> None:
    """A relay whose host stops (SIGSTOP here) closes nothing: its streams just go quiet. The
    relay's progress lines stop with it, and after IDLE_TIMEOUT the node lists again from
    its next relay."""
    with (
        relay_server(etcd.url) as first,
        relay_server(etcd.url) as second,
        following(etcd, (first.url, second.url)) as (writer, follower, a),
    ):
        os.kill(first.process.pid, signal.SIGSTOP)
        try:
            b = start_endpoint(writer, "b" * 64, "10.20.0.3")
            took = wait_for(
                lambda: follower.peers() == {a, b}, timeout=IDLE_TIMEOUT + 15, what="failover"
            )
            assert took > HEARTBEAT  # it did wait for the silence, not a closed connection
        finally:
            os.kill(first.process.pid, signal.SIGCONT)


def test_idle_streams_carry_progress_lines(etcd: EtcdServer, relay: RelayServer) -> None:
    revision = int(gateway.list_prefix(EtcdKV([relay.url]), PEERS)["header"]["revision"])
    started = time.monotonic()
    stream = gateway.WatchStream(EtcdKV([relay.url]), PEERS, revision + 1, 2 * HEARTBEAT)
    for lines, (result, _) in enumerate(stream, 1):
        assert not result.get("events")
        if lines == 2:  # "created", then one progress line
            break
    assert HEARTBEAT * 0.5 < time.monotonic() - started < HEARTBEAT * 2.5
