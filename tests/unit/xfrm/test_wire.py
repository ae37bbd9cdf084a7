"""Our NETLINK_XFRM encoder and decoder against bytes captured from iproute2 and the kernel.

The fixtures come from ``fixtures/capture.sh`` (``ip xfrm ...`` under strace,
in kernel-lab for ESP, on the development host for the "no AEAD" answer).
Each encoder must produce iproute2's message byte for byte, apart from the
sequence number and port id; each decoder must read the kernel's replies.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable

import pytest

from driver.kernel.xfrm import wire
from driver.kernel.xfrm.types import (
    Action,
    AeadKey,
    Direction,
    Mark,
    Policy,
    PolicyId,
    SAId,
    SecurityAssociation,
    Selector,
    Template,
)
from tests.unit.xfrm.strace_fixture import replies, request

A = ipaddress.IPv4Address("192.0.2.1")
B = ipaddress.IPv4Address("192.0.2.2")
A6 = ipaddress.IPv6Address("2001:db8::1")
B6 = ipaddress.IPv6Address("2001:db8::2")
REQID = 0x534E01
MARK = Mark(0x534E0000, 0xFFFF0000)
K20 = bytes(range(20))
K36 = bytes(range(0x20, 0x44))

SA_A_B = SecurityAssociation(A, B, 0x01001002, REQID, AeadKey(K20, 64), replay_window=0)
SA_B_A_MARKED = SecurityAssociation(
    B,
    A,
    0x01002001,
    REQID,
    AeadKey(K36, 128),
    mark=MARK,
    selector=Selector.hosts(B, A, dport=4789),
    replay_window=32,
)
SA_V6 = SecurityAssociation(A6, B6, 0x01001003, REQID, AeadKey(K20, 96), replay_window=0)

POL_OUT = Policy(
    Selector.hosts(A, B, dport=4789),
    Direction.OUT,
    priority=100,
    templates=(Template(REQID, A, B, spi=0x01001002),),
)
POL_IN_MARK = Policy(
    Selector.any(4, dport=4789),
    Direction.IN,
    priority=200,
    templates=(Template(REQID),),
    mark=MARK,
)
POL_BLOCK = Policy(
    Selector.any(4, dport=4789), Direction.OUT, priority=1000, action=Action.BLOCK, mark=MARK
)
POL_V6 = Policy(
    Selector.hosts(A6, B6, dport=4789),
    Direction.OUT,
    priority=100,
    templates=(Template(REQID, A6, B6),),
)
POL_OUT_ROTATED = Policy(
    POL_OUT.selector,
    Direction.OUT,
    priority=100,
    templates=(Template(REQID, A, B, spi=0x02001002),),
)

ENCODERS: dict[str, Callable[[], bytes]] = {
    "sa_add_v4": lambda: wire.encode_sa(SA_A_B),
    "sa_add_v4_mark_sel": lambda: wire.encode_sa(SA_B_A_MARKED),
    "sa_add_v6": lambda: wire.encode_sa(SA_V6),
    "sa_add_exists": lambda: wire.encode_sa(SA_A_B),
    "sa_update_v4": lambda: wire.encode_sa(SA_A_B, update=True),
    "sa_get_v4": lambda: wire.encode_sa_get(SA_A_B.id),
    "sa_list": lambda: wire.encode_sa_dump(),
    "sa_delete_v4": lambda: wire.encode_sa_delete(SA_A_B.id),
    "sa_delete_mark": lambda: wire.encode_sa_delete(SA_B_A_MARKED.id),
    "sa_delete_v6": lambda: wire.encode_sa_delete(SA_V6.id),
    "sa_delete_missing": lambda: wire.encode_sa_delete(SA_A_B.id),
    "pol_add_out": lambda: wire.encode_policy(POL_OUT),
    "pol_add_in_mark": lambda: wire.encode_policy(POL_IN_MARK),
    "pol_add_block": lambda: wire.encode_policy(POL_BLOCK),
    "pol_add_v6": lambda: wire.encode_policy(POL_V6),
    "pol_add_exists": lambda: wire.encode_policy(POL_OUT),
    "pol_update_out": lambda: wire.encode_policy(POL_OUT_ROTATED, update=True),
    "pol_get_out": lambda: wire.encode_policy_get(POL_OUT.id),
    "pol_list": lambda: wire.encode_policy_dump(),
    "pol_delete_out": lambda: wire.encode_policy_delete(POL_OUT.id),
    "pol_delete_in_mark": lambda: wire.encode_policy_delete(POL_IN_MARK.id),
    "pol_delete_block": lambda: wire.encode_policy_delete(POL_BLOCK.id),
    "pol_delete_v6": lambda: wire.encode_policy_delete(POL_V6.id),
    "pol_delete_missing": lambda: wire.encode_policy_delete(POL_OUT.id),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_matches_iproute2(name: str) -> None:
    ours = ENCODERS[name]()
    theirs = request(name)
    assert len(ours) == len(theirs)
    assert ours.hex() == theirs.hex()


def test_encoder_writes_the_sequence_number() -> None:
    data = wire.encode_sa_delete(SA_A_B.id, seq=0x01020304)
    assert data[8:12] == (0x01020304).to_bytes(4, "little")


def _decode_all(name: str) -> tuple[list[bytes], wire.Header]:
    """The data messages of a reply, and the header of the message that ended it."""
    items: list[bytes] = []
    last = None
    for raw in replies(name):
        header, _ = next(wire.split_messages(raw))
        if header.type in (wire.NLMSG_DONE, wire.NLMSG_ERROR):
            last = header
        else:
            items.append(raw)
    assert last is not None or items, f"{name}: no replies"
    return items, last or header


def test_decode_sa_dump() -> None:
    items, end = _decode_all("sa_list")
    assert end.type == wire.NLMSG_DONE
    sas = [wire.decode_sa(raw) for raw in items]
    assert sorted(sas, key=lambda s: s.spi) == [SA_A_B, SA_V6, SA_B_A_MARKED]


def test_decode_sa_get_reply() -> None:
    items, _ = _decode_all("sa_get_v4")
    assert [wire.decode_sa(raw) for raw in items] == [SA_A_B]


def test_decode_policy_dump() -> None:
    items, end = _decode_all("pol_list")
    assert end.type == wire.NLMSG_DONE
    policies = [wire.decode_policy(raw) for raw in items]
    # pol_list ran after pol_update_out, which replaced POL_OUT's template SPI.
    assert sorted(policies, key=str) == sorted(
        [POL_OUT_ROTATED, POL_IN_MARK, POL_BLOCK, POL_V6], key=str
    )
    assert all(p.index for p in policies), "the kernel assigns every policy an index"
    assert all(wire.policy_type(raw) == wire.XFRM_POLICY_TYPE_MAIN for raw in items)
    assert [wire.policy_direction(raw) for raw in items].count(Direction.IN) == 1


def test_decode_policy_get_reply() -> None:
    items, _ = _decode_all("pol_get_out")
    assert [wire.decode_policy(raw) for raw in items] == [POL_OUT_ROTATED]


def test_empty_dumps_end_with_done() -> None:
    for name in ("sa_list_empty", "pol_list_empty"):
        items, end = _decode_all(name)
        assert items == []
        assert end.type == wire.NLMSG_DONE
        assert wire.decode_done(replies(name)[-1]) == 0


@pytest.mark.parametrize(
    ("name", "err", "text"),
    [
        ("sa_add_v4", 0, ""),
        ("sa_add_exists", -errno.EEXIST, ""),
        ("sa_delete_missing", -errno.ESRCH, ""),
        ("pol_delete_missing", -errno.ENOENT, ""),
        ("pol_add_exists", -errno.EEXIST, ""),
        # The development host: no CONFIG_CRYPTO_GCM, no CONFIG_INET_ESP.
        ("host_sa_add_no_aead", -errno.ENOSYS, "Requested AEAD algorithm not found"),
        # kernel-lab, 5-byte key: the kernel's EINVAL text reads like missing crypto.
        (
            "sa_add_bad_keylen",
            -errno.EINVAL,
            "Kernel was unable to initialize cryptographic operations",
        ),
    ],
)
def test_decode_ack_and_errors(name: str, err: int, text: str) -> None:
    (raw,) = replies(name)
    header, _ = next(wire.split_messages(raw))
    assert header.type == wire.NLMSG_ERROR
    assert wire.decode_error(header, raw) == wire.NetlinkAck(err, text)


def test_split_messages_rejects_truncation() -> None:
    raw = replies("sa_list")[0]
    with pytest.raises(ValueError, match="truncated"):
        list(wire.split_messages(raw[:-8]))


def test_ids_encode_like_their_objects() -> None:
    assert wire.encode_sa_delete(SAId(A, B, 0x01001002)) == wire.encode_sa_delete(SA_A_B.id)
    assert wire.encode_policy_delete(
        PolicyId(POL_IN_MARK.selector, Direction.IN, MARK)
    ) == wire.encode_policy_delete(POL_IN_MARK.id)
