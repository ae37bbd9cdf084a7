"""The collector loop (plugin.lbcollector) on a real store (SQLite), replaying what a real
dockerd 20.10 swarm manager answered in each phase (swarm_data, data/README.md)."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.layout import StoreLayout
from driver.lb.collect import MarkTable
from driver.lb.model import Backend, ServiceRecord, mark
from driver.vni import VniTable
from plugin.app import STORE_ROOT
from plugin.election import LocalElection
from plugin.lbcollector import Collector, vni_networks
from plugin.store.etcd import StoreUnavailable
from plugin.store.sqlite import SqliteKV
from plugin.swarmview import DockerUnavailable, SwarmView
from tests.unit.lb import swarm_data as sd
from tests.unit.lb.swarm_data import LBNET1, LBNET2, PUB, WEB, FakeView

LAYOUT = StoreLayout(STORE_ROOT)

IP = ipaddress.IPv4Address


class FlakyKV:
    """The real store, with chosen methods failing as during an etcd outage."""

    def __init__(self, kv: SqliteKV) -> None:
        self.kv = kv
        self.down: set[str] = set()
        self.writes: list[tuple[str, str]] = []

    def _check(self, method: str) -> None:
        if method in self.down:
            raise StoreUnavailable(f"{method}: etcd is unreachable")

    def get(self, key: str) -> bytes | None:
        self._check("get")
        return self.kv.get(key)

    def list(self, prefix: str) -> dict[str, bytes]:
        self._check("list")
        return self.kv.list(prefix)

    def put(self, key: str, value: bytes) -> None:
        self._check("put")
        self.writes.append(("put", key))
        self.kv.put(key, value)

    def delete(self, key: str) -> None:
        self._check("delete")
        self.writes.append(("delete", key))
        self.kv.delete(key)

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        self._check("update")
        return self.kv.update(key, fn)


class SwitchElection:
    """An election whose outcome the test sets (the real ones: test_election.py, and
    LocalElection, which always leads)."""

    def __init__(self, leader: bool) -> None:
        self.leader = leader
        self.started = 0
        self.closed = 0
        self.leader_checks = 0
        self.lose_after: int | None = None  # is_leader turns False after this many calls

    def start(self) -> None:
        self.started += 1

    def is_leader(self) -> bool:
        self.leader_checks += 1
        if self.lose_after is not None and self.leader_checks > self.lose_after:
            self.leader = False
        return self.leader

    def close(self, timeout: float = 2.0) -> None:
        self.closed += 1

    def describe(self) -> dict[str, Any]:
        return {"leader": self.leader}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FlakyKV]:
    kv = SqliteKV(tmp_path / "shared.db")
    # Our networks, as AllocateNetwork leaves them in the VNI table.
    kv.put(LAYOUT.vni, VniTable({LBNET1: 256, LBNET2: 257}, 257).dump())
    yield FlakyKV(kv)
    kv.close()


def make(store: FlakyKV, view: FakeView, election: Any = None, poll: float = 2.0) -> Collector:
    return Collector(
        view, store, election or LocalElection(), vni_networks(store, LAYOUT), poll_interval=poll,
        layout=LAYOUT,
    )


def records(store: FlakyKV) -> dict[tuple[str, str], ServiceRecord]:
    out = {}
    for raw in store.kv.list(LAYOUT.lb_services).values():
        rec = ServiceRecord.from_json(raw)
        assert rec is not None
        out[(rec.network_id, rec.service_id)] = rec
    return out


def backends(*spec: tuple[str, int]) -> tuple[Backend, ...]:
    return tuple(sorted(Backend(IP(ip), w) for ip, w in spec))


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_our_networks_from_the_vni_table(store: FlakyKV) -> None:
    assert vni_networks(store, LAYOUT)() == {LBNET1, LBNET2} == sd.our_networks()
    store.kv.delete(LAYOUT.vni)
    assert vni_networks(store, LAYOUT)() == set()


def test_leader_writes_one_record_per_vip(store: FlakyKV) -> None:
    c = make(store, FakeView("1-running"))
    assert c.run_once()
    got = records(store)
    assert set(got) == {(LBNET1, WEB), (LBNET1, PUB), (LBNET2, PUB)}
    assert got[(LBNET1, WEB)].backends == backends(
        ("198.18.0.3", 1), ("198.18.0.4", 1), ("198.18.0.5", 1)
    )
    table = MarkTable.load(store.kv.get(LAYOUT.lb_marks)).by_target
    assert {k: mark(i) for k, i in table.items()} == {k: r.fwmark for k, r in got.items()}
    d = c.describe()
    assert (d["Role"], d["Services"], d["Backends"], d["LastError"]) == ("leader", 3, 7, None)
    assert d["LastRun"] is not None


def test_second_run_writes_nothing_when_nothing_changed(store: FlakyKV) -> None:
    c = make(store, FakeView("1-running"))
    assert c.run_once()
    store.writes.clear()
    assert c.run_once()
    assert store.writes == []


def test_draining_tasks_get_weight_0_then_scale_down_leaves_fewer(store: FlakyKV) -> None:
    view = FakeView("1-running")
    c = make(store, view)
    assert c.run_once()
    fwmark = records(store)[(LBNET1, WEB)].fwmark
    view.set_phase("2-draining")
    assert c.run_once()
    web = records(store)[(LBNET1, WEB)]
    assert web.backends == backends(("198.18.0.3", 1), ("198.18.0.4", 0), ("198.18.0.5", 0))
    view.set_phase("3-scaled")
    assert c.run_once()
    web = records(store)[(LBNET1, WEB)]
    assert web.backends == backends(("198.18.0.3", 1))
    assert web.fwmark == fwmark


def test_tasks_of_a_node_that_is_down_are_no_backends(store: FlakyKV) -> None:
    """Swarm keeps showing them running (nobody can say they stopped) while their
    addresses answer nothing; they come back when their node does."""
    view = FakeView("1-running")
    c = make(store, view)
    assert c.run_once()
    before = records(store)[(LBNET1, WEB)].backends
    task = next(
        t for t in view.tasks() if t["ServiceID"] == WEB and t["Status"]["State"] == "running"
    )
    view.down = {task["NodeID"]}
    assert c.run_once()
    on_that_node = {
        b.ip
        for t in view.tasks()
        if t["NodeID"] == task["NodeID"] and t["ServiceID"] == WEB
        for b in before
        if any(
            str(b.ip) == a.split("/")[0]
            for n in t.get("NetworksAttachments", [])
            for a in n["Addresses"]
        )
    }
    assert on_that_node, "the captured task has an address on the network"
    assert {b.ip for b in records(store)[(LBNET1, WEB)].backends} == {
        b.ip for b in before
    } - on_that_node
    view.down = set()
    assert c.run_once()
    assert records(store)[(LBNET1, WEB)].backends == before


def test_removed_service_loses_its_records_and_marks(store: FlakyKV) -> None:
    view = FakeView("3-scaled")
    c = make(store, view)
    assert c.run_once()
    web_mark = records(store)[(LBNET1, WEB)].fwmark
    view.set_phase("4-removed")
    assert c.run_once()
    assert set(records(store)) == {(LBNET1, WEB)}
    assert set(MarkTable.load(store.kv.get(LAYOUT.lb_marks)).by_target) == {(LBNET1, WEB)}
    assert records(store)[(LBNET1, WEB)].fwmark == web_mark
    # Deleted before anything was written, so a freed mark never shows twice.
    assert ("delete", LAYOUT.lb_service(LBNET1, PUB)) in store.writes


@pytest.mark.parametrize("failing", ["info", "services", "tasks", "nodes"])
def test_a_failed_listing_deletes_nothing(store: FlakyKV, failing: str) -> None:
    view = FakeView("1-running")
    c = make(store, view)
    assert c.run_once()
    before = store.kv.list("/")
    view.set_phase("4-removed")  # everything but web gone, had the listing worked
    view.failing = failing
    store.writes.clear()
    assert not c.run_once()
    assert store.writes == []
    assert store.kv.list("/") == before
    assert c.describe()["LastError"]
    view.failing = None
    assert c.run_once()
    assert set(records(store)) == {(LBNET1, WEB)}
    assert c.describe()["LastError"] is None


@pytest.mark.parametrize("down", ["get", "list", "update"])
def test_a_store_outage_deletes_nothing(store: FlakyKV, down: str) -> None:
    view = FakeView("1-running")
    c = make(store, view)
    assert c.run_once()
    before = store.kv.list("/")
    view.set_phase("4-removed")
    store.down = {down}
    store.writes.clear()
    assert not c.run_once()
    assert store.writes == []
    assert store.kv.list("/") == before
    assert "unreachable" in c.describe()["LastError"]


def test_vni_table_lists_our_networks_only(store: FlakyKV) -> None:
    store.kv.put(LAYOUT.vni, VniTable({LBNET2: 257}, 257).dump())
    c = make(store, FakeView("1-running"))
    assert c.run_once()
    assert set(records(store)) == {(LBNET2, PUB)}


def test_stale_and_unreadable_keys_under_the_prefix_go(store: FlakyKV) -> None:
    stale = LAYOUT.lb_service(LBNET1, "gone" * 6)
    store.kv.put(stale, b"{not json")
    c = make(store, FakeView("4-removed"))
    assert c.run_once()
    assert store.kv.get(stale) is None
    assert set(records(store)) == {(LBNET1, WEB)}


def test_worker_collects_nothing_and_does_not_campaign(store: FlakyKV) -> None:
    election = SwitchElection(leader=True)
    c = make(store, FakeView("1-running", manager=False), election)
    assert not c.run_once()
    assert records(store) == {}
    assert election.started == 0
    assert c.describe()["Role"] == "worker"


def test_standby_writes_nothing(store: FlakyKV) -> None:
    election = SwitchElection(leader=False)
    c = make(store, FakeView("1-running"), election)
    assert not c.run_once()
    assert (records(store), store.writes) == ({}, [])
    assert election.started == 1
    assert c.describe()["Role"] == "standby"


def test_demoted_manager_stops_campaigning(store: FlakyKV) -> None:
    election = SwitchElection(leader=True)
    view = FakeView("1-running")
    c = make(store, view, election)
    assert c.run_once()
    view.manager = False
    assert not c.run_once()
    assert election.closed == 1
    assert c.describe()["Role"] == "worker"


def test_losing_the_election_mid_run_stops_writing(store: FlakyKV) -> None:
    election = SwitchElection(leader=True)
    view = FakeView("1-running")
    c = make(store, view, election)
    election.lose_after = 3  # leads at the start of the run, then loses it while writing
    assert not c.run_once()
    assert 0 < len(store.writes) < 3
    assert c.describe()["Role"] == "standby"
    written = list(store.writes)
    assert not c.run_once()
    assert store.writes == written


def test_thread_follows_events_and_closes(store: FlakyKV) -> None:
    view = FakeView("1-running")
    # A poll far beyond the waits below: only events can make the runs happen.
    c = make(store, view, poll=3600)
    c.start()
    try:
        wait_for(lambda: len(records(store)) == 3, "the first records")
        view.set_phase("3-scaled")  # wakes the collector, as dockerd's service event does
        wait_for(
            lambda: records(store)[(LBNET1, WEB)].backends == backends(("198.18.0.3", 1)),
            "web scaled down to one backend",
        )
    finally:
        c.close()
    assert not any(t.is_alive() for t in c._threads), "close() left a thread running"
    assert view.closed


def test_a_worker_waits_on_no_docker_events(store: FlakyKV) -> None:
    """Only the leader follows dockerd's events (a worker gets no service events)."""

    class Counting(FakeView):
        waits = 0

        def wait_for_change(self, timeout: float) -> bool:
            Counting.waits += 1
            return super().wait_for_change(timeout)

    view = Counting("1-running", manager=False)
    c = make(store, view, poll=0.05)
    c.start()
    try:
        wait_for(lambda: c.describe()["Role"] == "worker", "the worker role")
        time.sleep(0.3)  # several polls: a wait would have started by now
    finally:
        c.close()
    assert Counting.waits == 0


class InfoServer:
    """dockerd's GET /info on a real unix socket, answering with the captured reply."""

    def __init__(self, path: Path, body: Any, status: int = 200) -> None:
        import http.server
        import socketserver

        reply = json.dumps(body).encode()
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                return None

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_swarm_view_reads_the_role_from_info_on_a_unix_socket(tmp_path: Path) -> None:
    worker = sd.load("info.json")
    worker["Swarm"]["ControlAvailable"] = False
    for body, want in ((sd.load("info.json"), True), (worker, False)):
        sock = tmp_path / f"d-{want}.sock"
        server = InfoServer(sock, body)
        try:
            assert SwarmView(f"unix://{sock}").is_manager() is want
            assert server.paths == ["/v1.41/info"]
        finally:
            server.close()
    sock = tmp_path / "err.sock"
    server = InfoServer(sock, {"message": "boom"}, status=500)
    try:
        with pytest.raises(DockerUnavailable, match="HTTP 500"):
            SwarmView(f"unix://{sock}").is_manager()
    finally:
        server.close()
    with pytest.raises(DockerUnavailable):
        SwarmView(f"unix://{tmp_path / 'none.sock'}").is_manager()


def test_swarm_view_reads_the_role_through_the_sdk_over_tcp() -> None:
    class API:
        def info(self) -> Any:
            return sd.load("info.json")

    assert SwarmView("tcp://127.0.0.1:1", api=API()).is_manager() is True


def test_a_freed_mark_leaves_the_store_before_it_is_reused(store: FlakyKV) -> None:
    store.kv.put(LAYOUT.vni, VniTable({LBNET2: 257}, 257).dump())
    c = make(store, FakeView("1-running"))
    assert c.run_once()
    assert records(store)[(LBNET2, PUB)].fwmark == mark(1)
    # lbnet2 leaves our networks and lbnet1 joins them: mark 1 moves to a new record.
    store.kv.put(LAYOUT.vni, VniTable({LBNET1: 256}, 257).dump())
    store.writes.clear()
    assert c.run_once()
    got = records(store)
    assert set(got) == {(LBNET1, WEB), (LBNET1, PUB)}
    reused = next(r for r in got.values() if r.fwmark == mark(1))
    assert store.writes.index(("delete", LAYOUT.lb_service(LBNET2, PUB))) < store.writes.index(
        ("put", LAYOUT.lb_service(reused.network_id, reused.service_id))
    )
