"""Records and joins -> what each sandbox holds (driver.lb.desired, driver.lb.model)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from driver.lb.desired import desired_states
from driver.lb.model import (
    MARK_BASE,
    Backend,
    ServiceRecord,
    VirtualService,
    is_our_mark,
    mark,
)

IP = ipaddress.IPv4Address
NET_A = "a" * 64
NET_B = "b" * 64


def rec(
    network: str, service: str, vip: str, index: int, *ips: str, weight: int = 1
) -> ServiceRecord:
    return ServiceRecord(
        network_id=network,
        service_id=service,
        name=f"svc-{service}",
        vip=IP(vip),
        fwmark=mark(index),
        backends=tuple(sorted(Backend(IP(i), weight) for i in ips)),
    )


def test_record_round_trips_through_json_with_a_version() -> None:
    r = rec(NET_A, "s1", "10.0.1.2", 7, "10.0.1.5", "10.0.1.3")
    raw = r.to_json()
    assert json.loads(raw)["v"] == 1
    assert ServiceRecord.from_json(raw) == r


def test_a_record_of_a_newer_format_is_ignored_not_guessed_at() -> None:
    d = json.loads(rec(NET_A, "s1", "10.0.1.2", 7).to_json())
    d["v"] = 2
    assert ServiceRecord.from_json(json.dumps(d).encode()) is None


def test_marks_live_in_our_range_only() -> None:
    assert mark(1) == MARK_BASE | 1
    assert is_our_mark(mark(0xFFFF))
    assert not is_our_mark(256)  # Docker's own counter starts there
    assert not is_our_mark(MARK_BASE)
    with pytest.raises(ValueError):
        mark(0)
    with pytest.raises(ValueError):
        VirtualService(vip=IP("10.0.1.2"), fwmark=256, backends=())


def test_backends_must_be_sorted_and_unique() -> None:
    with pytest.raises(ValueError):
        VirtualService(
            vip=IP("10.0.1.2"),
            fwmark=mark(1),
            backends=(Backend(IP("10.0.1.5")), Backend(IP("10.0.1.3"))),
        )


def test_a_sandbox_gets_the_services_of_every_network_it_is_joined_to() -> None:
    a1 = rec(NET_A, "s1", "10.0.1.2", 1, "10.0.1.5")
    a2 = rec(NET_A, "s2", "10.0.1.9", 2, "10.0.1.6")
    b1 = rec(NET_B, "s1", "10.0.2.2", 3, "10.0.2.5")
    out = desired_states([a1, a2, b1], {"/sb/x": {NET_A}, "/sb/y": {NET_A, NET_B}, "/sb/z": set()})
    assert [s.fwmark for s in out["/sb/x"]] == [mark(1), mark(2)]
    assert [s.fwmark for s in out["/sb/y"]] == [mark(1), mark(2), mark(3)]
    assert out["/sb/z"] == ()


def test_the_own_task_stays_a_backend_for_the_hairpin() -> None:
    a1 = rec(NET_A, "s1", "10.0.1.2", 1, "10.0.1.5", "10.0.1.6")
    (vs,) = desired_states([a1], {"/sb/task": {NET_A}})["/sb/task"]
    assert [b.ip for b in vs.backends] == [IP("10.0.1.5"), IP("10.0.1.6")]


def test_a_clash_of_marks_or_vips_in_one_sandbox_is_resolved_the_same_way_everywhere() -> None:
    first = rec(NET_A, "s1", "10.0.1.2", 1, "10.0.1.5")
    same_mark = rec(NET_B, "s2", "10.0.2.2", 1, "10.0.2.5")
    same_vip = rec(NET_B, "s3", "10.0.1.2", 4, "10.0.2.6")
    for order in ([first, same_mark, same_vip], [same_vip, same_mark, first]):
        (vs,) = desired_states(order, {"/sb": {NET_A, NET_B}})["/sb"]
        assert vs == first.virtual_service()
