"""driver.peerset: the peers of a network by endpoint, changed a few endpoints at a time."""

from __future__ import annotations

import ipaddress

from driver.kernel.port import Peer
from driver.peerset import PeerSet


def peer(n: int, vtep: int = 2) -> Peer:
    return Peer(
        ip=ipaddress.ip_address(f"10.0.0.{n}"),
        mac=f"02:42:0a:00:00:{n:02x}",
        vtep=ipaddress.ip_address(f"192.0.2.{vtep}"),
    )


def test_changes_give_the_peers_to_add_and_to_remove() -> None:
    s = PeerSet({"a": peer(1), "b": peer(2)})
    missing, stale = s.apply({"c": peer(3), "a": None})
    assert (missing, stale) == ({peer(3)}, {peer(1)})
    assert set(s.peers()) == {peer(2), peer(3)}
    assert len(s) == 2


def test_an_unchanged_record_and_an_unknown_deletion_change_nothing() -> None:
    s = PeerSet({"a": peer(1)})
    assert s.apply({"a": peer(1), "zz": None}) == (set(), set())
    assert set(s.peers()) == {peer(1)}


def test_a_moved_endpoint_swaps_its_peer() -> None:
    s = PeerSet({"a": peer(1, vtep=2)})
    missing, stale = s.apply({"a": peer(1, vtep=3)})
    assert (missing, stale) == ({peer(1, vtep=3)}, {peer(1, vtep=2)})


def test_a_peer_named_by_two_endpoints_leaves_with_the_last() -> None:
    s = PeerSet({"old": peer(1)})
    assert s.apply({"new": peer(1)}) == (set(), set())  # re-created under a new ID
    assert s.apply({"old": None}) == (set(), set())
    assert s.apply({"new": None}) == (set(), {peer(1)})
    assert not s.peers()


def test_a_peer_that_leaves_and_comes_back_in_one_change_is_left_alone() -> None:
    s = PeerSet({"a": peer(1)})
    assert s.apply({"a": None, "b": peer(1)}) == (set(), set())
    assert set(s.peers()) == {peer(1)}
    fresh = PeerSet()
    assert fresh.apply({"a": peer(4), "b": peer(5)}) == ({peer(4), peer(5)}, set())
    assert fresh.apply({"a": None, "c": peer(4)}) == (set(), set())
