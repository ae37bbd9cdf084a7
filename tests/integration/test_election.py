"""The load-balancing collector's election (plugin/election.py) against a real etcd.

Three electors share one etcd: exactly one leads; the leader's close hands over; a
leader that stops keeping its lease alive (crashed, or cut off from etcd) is replaced
once etcd expires its lease, and never overlaps with its successor. Last, two
collectors (plugin/lbcollector.py) fail over on it.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from core.layout import StoreLayout
from driver.lb.model import ServiceRecord
from driver.vni import VniTable
from plugin.app import STORE_ROOT
from plugin.election import EtcdElection
from plugin.lbcollector import Collector, vni_networks
from plugin.store.etcd import EtcdKV
from testbed.etcdserver import EtcdServer
from tests.unit.lb.swarm_data import LBNET1, LBNET2, WEB, FakeView

TTL = 3  # seconds; the smallest that leaves the keepalive (every TTL/3) room
LAYOUT = StoreLayout(STORE_ROOT)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def leaders(electors: list[EtcdElection]) -> list[EtcdElection]:
    return [e for e in electors if e.is_leader()]


def key_lease(kv: EtcdKV) -> int | None:
    payload = {"key": base64.b64encode(LAYOUT.lb_collector.encode()).decode()}
    kvs = kv.call(lambda c: c.post(c.get_url("/kv/range"), json=payload)).get("kvs") or []
    return int(kvs[0].get("lease", 0)) if kvs else None


def lease_ttl(kv: EtcdKV, lease: int) -> int:
    result = kv.call(lambda c: c.post(c.get_url("/lease/timetolive"), json={"ID": lease}))
    return int(result.get("TTL", -1))


@pytest.fixture
def electors(etcd: EtcdServer) -> Iterator[list[EtcdElection]]:
    made = [
        EtcdElection(EtcdKV([etcd.url]), ttl=TTL, identity=f"m{i}", key=LAYOUT.lb_collector)
        for i in range(3)
    ]
    for e in made:
        e.start()
    yield made
    for e in made:
        e.close()


def test_one_leader_among_three(electors: list[EtcdElection], etcd: EtcdServer) -> None:
    wait_for(lambda: len(leaders(electors)) == 1, 2 * TTL, "a leader")
    (leader,) = leaders(electors)
    # Several keepalive rounds later, still the same single leader.
    for _ in range(3 * TTL * 10):
        assert leaders(electors) == [leader]
        time.sleep(0.1)
    assert key_lease(EtcdKV([etcd.url])) == leader._lease
    for e in electors:
        assert e.describe()["holder"] == leader.identity


def test_close_hands_over_at_once(electors: list[EtcdElection], etcd: EtcdServer) -> None:
    wait_for(lambda: len(leaders(electors)) == 1, 2 * TTL, "a leader")
    (old,) = leaders(electors)
    lease = old._lease
    assert lease is not None
    old.close()
    assert not old.is_leader()
    # The lease is revoked, not left to expire: etcd no longer knows it at all.
    assert lease_ttl(EtcdKV([etcd.url]), lease) == -1
    rest = [e for e in electors if e is not old]
    wait_for(lambda: len(leaders(rest)) == 1, 2 * TTL, "a successor")
    assert not old.is_leader()


def test_crashed_leader_is_replaced_after_its_lease_expires(
    electors: list[EtcdElection], etcd: EtcdServer
) -> None:
    wait_for(lambda: len(leaders(electors)) == 1, 2 * TTL, "a leader")
    (old,) = leaders(electors)
    lease = old._lease
    assert lease is not None
    kv = EtcdKV([etcd.url])
    old.close(revoke=False)  # stops its keepalives and leaves the lease, as a crash does
    rest = [e for e in electors if e is not old]
    # While etcd still holds the old lease, nobody else may lead. (Leaders first: a lease
    # alive after that look was alive during it.)
    while True:
        led = leaders(rest)
        if lease_ttl(kv, lease) <= 0:
            break
        assert led == []
        time.sleep(0.05)
    wait_for(lambda: len(leaders(rest)) == 1, TTL + 2, "a successor after the lease expired")
    assert key_lease(kv) != lease


class Proxy:
    """TCP on loopback, forwarding to etcd until ``cut`` drops every connection."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:
                    client.close()
                    return
                upstream = socket.create_connection(self.target)
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with self.lock:
            self.closed = True
            # shutdown, not only close: a close leaves a blocked accept() accepting.
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def test_leader_cut_off_from_etcd_steps_down_before_successor(etcd: EtcdServer) -> None:
    proxy = Proxy(etcd.client_port)
    cut_off = EtcdElection(
        EtcdKV([f"http://127.0.0.1:{proxy.port}"], timeout=1), ttl=TTL, key=LAYOUT.lb_collector
    )
    cut_off.start()
    try:
        wait_for(cut_off.is_leader, 2 * TTL, "the first elector to lead")
        others = [
            EtcdElection(EtcdKV([etcd.url]), ttl=TTL, identity=f"m{i}", key=LAYOUT.lb_collector)
            for i in range(2)
        ]
        for e in others:
            e.start()
        try:
            time.sleep(0.5)
            assert leaders(others) == []
            proxy.cut()  # the leader's keepalives no longer reach etcd
            overlap = False
            deadline = time.monotonic() + 2 * TTL + 2
            while time.monotonic() < deadline and len(leaders(others)) != 1:
                # Successors first: the cut-off one cannot lead again once it stopped.
                succeeded = bool(leaders(others))
                overlap = overlap or (succeeded and cut_off.is_leader())
                time.sleep(0.01)
            assert len(leaders(others)) == 1, "no successor took over"
            assert not overlap, "the cut-off leader still led when a successor did"
            assert not cut_off.is_leader()
        finally:
            for e in others:
                e.close()
    finally:
        cut_off.close(timeout=0.1)


def test_a_closed_elector_can_campaign_again(electors: list[EtcdElection]) -> None:
    wait_for(lambda: len(leaders(electors)) == 1, 2 * TTL, "a leader")
    (first,) = leaders(electors)
    first.close()
    rest = [e for e in electors if e is not first]
    wait_for(lambda: len(leaders(rest)) == 1, 2 * TTL, "a successor")
    (second,) = leaders(rest)
    first.start()  # e.g. a manager demoted to worker and promoted again
    time.sleep(1.5)  # a few campaign rounds: it must stay standby
    assert leaders(electors) == [second]
    for e in rest:
        e.close()
    wait_for(first.is_leader, 2 * TTL, "the restarted elector to lead")


def test_collectors_fail_over_and_keep_the_marks(etcd: EtcdServer) -> None:
    """Two managers' collectors on one etcd: only the leader writes; its successor takes
    the records over with the same fwmarks and carries on."""
    kv = EtcdKV([etcd.url])
    kv.put(LAYOUT.vni, VniTable({LBNET1: 256, LBNET2: 257}, 257).dump())

    def records() -> dict[tuple[str, str], ServiceRecord]:
        out = {}
        for raw in kv.list(LAYOUT.lb_services).values():
            rec = ServiceRecord.from_json(raw)
            assert rec is not None
            out[(rec.network_id, rec.service_id)] = rec
        return out

    views = [FakeView("1-running"), FakeView("1-running")]
    collectors = []
    for i, view in enumerate(views):
        shared = EtcdKV([etcd.url])
        election = EtcdElection(shared, ttl=TTL, identity=f"m{i}", key=LAYOUT.lb_collector)
        collectors.append(
            Collector(view, shared, election, vni_networks(shared, LAYOUT), 0.1, layout=LAYOUT)
        )
    for c in collectors:
        c.start()
    try:
        wait_for(lambda: len(records()) == 3, 2 * TTL, "the first records")
        roles = sorted(c.describe()["Role"] for c in collectors)
        assert roles == ["leader", "standby"]
        leader = next(c for c in collectors if c.describe()["Role"] == "leader")
        other = next(c for c in collectors if c is not leader)
        marks = {k: r.fwmark for k, r in records().items()}
        leader.close()
        for view in views:
            view.set_phase("4-removed")
        wait_for(lambda: set(records()) == {(LBNET1, WEB)}, 2 * TTL, "the successor's write")
        assert other.describe()["Role"] == "leader"
        assert records()[(LBNET1, WEB)].fwmark == marks[(LBNET1, WEB)]
    finally:
        for c in collectors:
            c.close()
