"""Docker's service and task view -> service records (driver.lb.collect), on what a real
dockerd 20.10 swarm manager sent (data/README.md), plus the fwmark table's rules."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import pytest

from core.errors import Exhausted
from driver.lb import collect
from driver.lb.collect import MarkTable, Target, assign_marks
from driver.lb.model import MARK_MAX_INDEX, Backend, ServiceRecord, mark
from tests.unit.lb import swarm_data as sd
from tests.unit.lb.swarm_data import LBNET1, LBNET2, PUB, RR, WEB

IP = ipaddress.IPv4Address
OURS = {LBNET1, LBNET2}


def run(phase: str, ours: set[str] = OURS, table: MarkTable | None = None) -> list[ServiceRecord]:
    wanted = collect.targets(sd.services(phase), ours)
    table = (table or MarkTable({})).assign({t.key for t in wanted})
    return collect.records(wanted, sd.tasks(phase), table.by_target)


def by_key(records: list[ServiceRecord]) -> dict[tuple[str, str], ServiceRecord]:
    return {(r.network_id, r.service_id): r for r in records}


def backends(*spec: tuple[str, int]) -> tuple[Backend, ...]:
    return tuple(sorted(Backend(IP(ip), w) for ip, w in spec))


def test_our_networks_in_the_capture() -> None:
    assert sd.our_networks() == OURS


def test_targets_vip_services_on_our_networks_only() -> None:
    assert collect.targets(sd.services("1-running"), OURS) == sorted(
        [
            Target(LBNET1, WEB, "web", IP("198.18.0.2")),
            Target(LBNET1, PUB, "pub", IP("198.18.0.8")),
            Target(LBNET2, PUB, "pub", IP("198.18.1.2")),
        ]
    )
    # The ingress VIP (Docker's own overlay) and the dnsrr service give nothing.
    assert all(t.service_id != RR for t in collect.targets(sd.services("1-running"), OURS))
    assert collect.targets(sd.services("1-running"), set()) == []
    assert [t.key for t in collect.targets(sd.services("1-running"), {LBNET2})] == [(LBNET2, PUB)]


def test_all_running() -> None:
    got = by_key(run("1-running"))
    assert set(got) == {(LBNET1, WEB), (LBNET1, PUB), (LBNET2, PUB)}
    web = got[(LBNET1, WEB)]
    assert (web.name, web.vip) == ("web", IP("198.18.0.2"))
    assert web.backends == backends(("198.18.0.3", 1), ("198.18.0.4", 1), ("198.18.0.5", 1))
    # One service on two of our networks: one record per network, each with the tasks'
    # address on that network (the ingress addresses are not ours).
    assert got[(LBNET1, PUB)].backends == backends(("198.18.0.9", 1), ("198.18.0.10", 1))
    assert got[(LBNET2, PUB)].backends == backends(("198.18.1.3", 1), ("198.18.1.4", 1))
    assert got[(LBNET2, PUB)].vip == IP("198.18.1.2")


def test_scaled_down_tasks_drain_with_weight_0_then_go() -> None:
    # dockerd 20.10 marks the tasks a scale-down stops with desired state "remove";
    # sleep ignores SIGTERM, so they run on for their grace period.
    draining = by_key(run("2-draining"))[(LBNET1, WEB)]
    assert draining.backends == backends(("198.18.0.3", 1), ("198.18.0.4", 0), ("198.18.0.5", 0))
    scaled = by_key(run("3-scaled"))[(LBNET1, WEB)]
    assert scaled.backends == backends(("198.18.0.3", 1))
    assert scaled.fwmark == draining.fwmark


def test_removed_service_has_no_record_though_its_tasks_still_run() -> None:
    got = by_key(run("4-removed"))
    assert set(got) == {(LBNET1, WEB)}


def test_desired_shutdown_drains_too() -> None:
    # A rolling update stops the old task with desired state "shutdown".
    tasks = copy.deepcopy(sd.tasks("1-running"))
    web = [t for t in tasks if t["ServiceID"] == WEB]
    web[0]["DesiredState"] = "shutdown"
    weights = collect.backends_by_target(tasks)[(LBNET1, WEB)]
    assert sorted(weights.values()) == [0, 1, 1]


@pytest.mark.parametrize("state", ["starting", "preparing", "complete", "failed", "shutdown"])
def test_tasks_not_running_are_left_out(state: str) -> None:
    tasks = copy.deepcopy(sd.tasks("1-running"))
    for t in tasks:
        if t["ServiceID"] == WEB:
            t["Status"]["State"] = state
    assert by_key(collect.records(*_wanted_and(tasks)))[(LBNET1, WEB)].backends == ()


def test_task_without_address_is_left_out() -> None:
    tasks = copy.deepcopy(sd.tasks("1-running"))
    web = [t for t in tasks if t["ServiceID"] == WEB]
    web[0]["NetworksAttachments"][0]["Addresses"] = []
    del web[1]["NetworksAttachments"]
    assert len(by_key(collect.records(*_wanted_and(tasks)))[(LBNET1, WEB)].backends) == 1


def _wanted_and(tasks: list[dict[str, Any]]) -> tuple[list[Target], list[dict[str, Any]], Any]:
    wanted = collect.targets(sd.services("1-running"), OURS)
    return wanted, tasks, MarkTable({}).assign({t.key for t in wanted}).by_target


def test_endpoint_mode_absent_means_vip_and_dnsrr_gives_nothing() -> None:
    services = copy.deepcopy(sd.services("1-running"))
    web = next(s for s in services if s["ID"] == WEB)
    del web["Spec"]["EndpointSpec"]
    assert (LBNET1, WEB) in {t.key for t in collect.targets(services, OURS)}
    web["Spec"]["EndpointSpec"] = {"Mode": "dnsrr"}
    assert (LBNET1, WEB) not in {t.key for t in collect.targets(services, OURS)}


def test_service_not_allocated_yet_gives_nothing() -> None:
    services = copy.deepcopy(sd.services("1-running"))
    for s in services:
        s.pop("Endpoint", None)
    assert collect.targets(services, OURS) == []


def test_records_serialise_and_come_back() -> None:
    for rec in run("2-draining"):
        assert ServiceRecord.from_json(rec.to_json()) == rec
        rec.virtual_service()  # valid: our mark, sorted unique backends


# --------------------------------------------------------------------------- fwmarks


def test_marks_smallest_free_first_and_stable() -> None:
    a, b, c = ("n", "a"), ("n", "b"), ("n", "c")
    t1 = MarkTable({}).assign({a, b, c})
    assert t1.by_target == {a: 1, b: 2, c: 3}
    t2 = t1.assign({a, c})
    assert t2.by_target == {a: 1, c: 3}  # b's index is free, the others keep theirs
    d = ("n", "d")
    assert t2.assign({a, c, d}).by_target == {a: 1, c: 3, d: 2}


def test_marks_in_records_follow_the_table() -> None:
    first = by_key(run("1-running"))
    assert sorted(r.fwmark for r in first.values()) == [mark(1), mark(2), mark(3)]
    table = MarkTable({k: int(r.fwmark & 0xFFFF) for k, r in first.items()})
    # pub goes: its marks are freed; web keeps its own.
    after = by_key(run("4-removed", table=table))
    assert after[(LBNET1, WEB)].fwmark == first[(LBNET1, WEB)].fwmark
    # Sorted by key, web came last and got 3; with 1 and 2 free now it still keeps 3.
    assert after[(LBNET1, WEB)].fwmark == mark(3)


def test_marks_exhausted() -> None:
    full = MarkTable({("n", str(i)): i for i in range(1, MARK_MAX_INDEX + 1)})
    with pytest.raises(Exhausted):
        full.assign(set(full.by_target) | {("n", "one more")})


def test_assign_marks_update_function() -> None:
    wanted = {(LBNET1, WEB), (LBNET1, PUB)}
    fn = assign_marks(wanted)
    raw = fn(None)
    assert raw is not None
    assert MarkTable.load(raw).by_target == {(LBNET1, PUB): 1, (LBNET1, WEB): 2}
    assert fn(raw) is raw  # nothing to change: the same value, so no write
    assert assign_marks(set())(raw) is None  # nothing left: the key goes
    assert assign_marks(set())(None) is None
    assert MarkTable.load(MarkTable.load(raw).dump()) == MarkTable.load(raw)


def test_mark_table_of_a_newer_format_is_not_changed() -> None:
    raw = json.dumps({"v": 99, "marks": {}}).encode()
    with pytest.raises(ValueError, match="newer"):
        assign_marks({("n", "s")})(raw)
