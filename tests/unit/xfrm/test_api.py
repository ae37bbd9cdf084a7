"""The Xfrm request loop and error mapping, replaying the kernel answers in ``fixtures/``.

No root: a stand-in socket records what Xfrm sends and answers with the
datagrams the real kernel sent iproute2 for the same request (renumbered to
the request's sequence number). ``tests/kernellab`` runs the same calls
against the real kernel, which keeps this stand-in honest.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.iptypes import IPAddress
from driver.kernel.xfrm import (
    Action,
    AeadKey,
    Direction,
    Mark,
    Policy,
    SecurityAssociation,
    Selector,
    Template,
    Xfrm,
    XfrmError,
    XfrmUnsupported,
    wire,
)
from tests.unit.xfrm.strace_fixture import load
from tests.unit.xfrm.test_wire import K20, K36, POL_OUT, SA_A_B, SA_B_A_MARKED, SA_V6


class ReplaySocket:
    """Answers each request with the next captured kernel reply, renumbered."""

    def __init__(self, *fixtures: str, stale_first: bool = False) -> None:
        self.answers = [load(name).received for name in fixtures]
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []
        self.stale_first = stale_first
        self.closed = False

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        (seq,) = struct.unpack_from("=I", data, 8)
        datagrams = self.answers.pop(0)
        if self.stale_first:
            # An answer to an older request that nobody read: must be skipped.
            self.queue.append(self._renumber(datagrams[-1], seq - 1))
            self.stale_first = False
        self.queue += [self._renumber(d, seq) for d in datagrams]
        return len(data)

    @staticmethod
    def _renumber(datagram: bytes, seq: int) -> bytes:
        out = bytearray(datagram)
        offset = 0
        while offset + 16 <= len(out):
            (length,) = struct.unpack_from("=I", out, offset)
            struct.pack_into("=I", out, offset + 8, seq & 0xFFFFFFFF)
            offset += (length + 3) & ~3
        return bytes(out)

    def recv_into(self, buf: bytearray, nbytes: int, flags: int) -> int:
        assert flags == socket.MSG_PEEK | socket.MSG_TRUNC
        return len(self.queue[0])

    def recv(self, size: int) -> bytes:
        data = self.queue.pop(0)
        assert size == len(data)
        return data

    def settimeout(self, _: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def xfrm_replaying(*fixtures: str, stale_first: bool = False) -> tuple[Xfrm, ReplaySocket]:
    sock = ReplaySocket(*fixtures, stale_first=stale_first)
    return Xfrm._with_socket(sock), sock  # type: ignore[arg-type]


def strip_seq(data: bytes) -> bytes:
    return data[:8] + bytes(8) + data[16:]


def test_add_sa_sends_the_encoded_request_and_accepts_the_ack() -> None:
    x, sock = xfrm_replaying("sa_add_v4")
    x.add_sa(SA_A_B)
    assert [strip_seq(m) for m in sock.sent] == [wire.encode_sa(SA_A_B)]
    assert sock.queue == []


def test_each_request_gets_a_new_sequence_number() -> None:
    x, sock = xfrm_replaying("sa_add_v4", "sa_delete_v4")
    x.add_sa(SA_A_B)
    x.delete_sa(SA_A_B.id)
    seqs = [struct.unpack_from("=I", m, 8)[0] for m in sock.sent]
    assert seqs[1] == seqs[0] + 1


def test_answers_to_other_requests_are_skipped() -> None:
    x, sock = xfrm_replaying("sa_delete_missing", "sa_list", stale_first=True)
    assert x.delete_sa(SA_A_B.id) is False
    assert len(x.list_sas()) == 3
    assert sock.queue == []


def test_delete_of_a_missing_sa_or_policy_is_success() -> None:
    x, _ = xfrm_replaying(
        "sa_delete_v4", "sa_delete_missing", "pol_delete_out", "pol_delete_missing"
    )
    assert x.delete_sa(SA_A_B.id) is True
    assert x.delete_sa(SA_A_B.id) is False
    assert x.delete_policy(POL_OUT.id) is True
    assert x.delete_policy(POL_OUT.id) is False


def test_missing_aead_raises_unsupported_naming_the_kernel_support() -> None:
    x, _ = xfrm_replaying("host_sa_add_no_aead")
    with pytest.raises(XfrmUnsupported) as caught:
        x.add_sa(SA_A_B)
    err = caught.value
    assert err.errno == errno.ENOSYS
    assert err.missing == ("rfc4106(gcm(aes))",)
    assert err.kernel_message == "Requested AEAD algorithm not found"
    text = str(err)
    assert "cannot do IPsec ESP" in text
    assert "CONFIG_CRYPTO_GCM" in text
    assert "spi 0x01001002" in text
    assert K20.hex() not in text


def test_existing_sa_raises_plain_error() -> None:
    x, _ = xfrm_replaying("sa_add_exists")
    with pytest.raises(XfrmError) as caught:
        x.add_sa(SA_A_B)
    assert not isinstance(caught.value, XfrmUnsupported)
    assert caught.value.errno == errno.EEXIST
    assert "adding SA esp spi 0x01001002 192.0.2.1->192.0.2.2" in str(caught.value)


def test_a_bad_key_is_not_reported_as_missing_kernel_support() -> None:
    # The kernel's text for EINVAL ("unable to initialize cryptographic
    # operations") sounds like missing crypto, but it is our key length.
    x, _ = xfrm_replaying("sa_add_bad_keylen")
    with pytest.raises(XfrmError) as caught:
        x.add_sa(SA_A_B)
    assert not isinstance(caught.value, XfrmUnsupported)
    assert caught.value.errno == errno.EINVAL


def test_ensure_sa_accepts_the_identical_sa() -> None:
    x, sock = xfrm_replaying("sa_add_exists", "sa_get_v4")
    assert x.ensure_sa(SA_A_B) is False
    assert strip_seq(sock.sent[1]) == wire.encode_sa_get(SA_A_B.id)


def test_ensure_sa_refuses_a_different_sa_with_the_same_spi() -> None:
    other_key = SecurityAssociation(
        SA_A_B.src, SA_A_B.dst, SA_A_B.spi, SA_A_B.reqid, AeadKey(K36, 64), replay_window=0
    )
    x, _ = xfrm_replaying("sa_add_exists", "sa_get_v4")
    with pytest.raises(XfrmError) as caught:
        x.ensure_sa(other_key)
    assert caught.value.errno == errno.EEXIST
    assert K36.hex() not in str(caught.value) and K20.hex() not in str(caught.value)


def test_get_missing_sa_is_none() -> None:
    x, _ = xfrm_replaying("sa_delete_missing")  # an ESRCH answer
    assert x.get_sa(SA_A_B.id) is None


def test_list_sas_and_policies_decode_the_dumps() -> None:
    x, sock = xfrm_replaying("sa_list", "pol_list", "sa_list_empty")
    assert sorted(x.list_sas(), key=lambda s: s.spi) == [SA_A_B, SA_V6, SA_B_A_MARKED]
    assert len(x.list_policies()) == 4
    assert x.list_sas() == []
    assert strip_seq(sock.sent[0]) == wire.encode_sa_dump()
    assert strip_seq(sock.sent[1]) == wire.encode_policy_dump()


def test_listing_leaves_out_sas_of_kinds_we_never_create() -> None:
    x, sock = xfrm_replaying("sa_list")
    datagram = bytearray(sock.answers[0][0])
    struct.pack_into("=B", datagram, 16 + 214, 5)  # first SA's mode: IPTFS (Linux 6.14+)
    sock.answers[0] = [bytes(datagram), *sock.answers[0][1:]]
    assert sorted(sa.spi for sa in x.list_sas()) == [SA_A_B.spi, SA_B_A_MARKED.spi]


def test_flush_deletes_only_what_matches() -> None:
    x, sock = xfrm_replaying("sa_list", "sa_delete_mark")
    deleted = x.flush_sas(lambda sa: sa.mark is not None)
    assert deleted == [SA_B_A_MARKED.id]
    assert strip_seq(sock.sent[1]) == wire.encode_sa_delete(SA_B_A_MARKED.id)


def test_interrupted_dump_is_taken_again() -> None:
    x, sock = xfrm_replaying("sa_list", "sa_list")
    first = sock.answers[0]
    # Flag the first dump as interrupted (NLM_F_DUMP_INTR on its items).
    flagged = bytearray(first[0])
    offset = 0
    while offset + 16 <= len(flagged):
        (length, _, flags) = struct.unpack_from("=IHH", flagged, offset)
        struct.pack_into("=H", flagged, offset + 6, flags | wire.NLM_F_DUMP_INTR)
        offset += (length + 3) & ~3
    sock.answers[0] = [bytes(flagged), *first[1:]]
    assert len(x.list_sas()) == 3
    assert len(sock.sent) == 2


# ---------------------------------------------------------------- key material


def test_key_material_never_appears_in_reprs_or_messages() -> None:
    for sa in (SA_A_B, SA_B_A_MARKED):
        assert sa.aead is not None
        key = sa.aead.key
        for text in (repr(sa), str(sa), repr(sa.aead), str(sa.aead), repr(sa.id)):
            assert key.hex() not in text
            assert repr(key) not in text
            assert repr(key)[2:-1] not in text
        assert f"<{len(key)} bytes redacted>" in repr(sa)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": bytes(16)}, "16, 24 or 32-byte AES key plus a 4-byte salt"),
        ({"key": bytes(20), "icv_bits": 32}, "ICV must be one of"),
    ],
)
def test_aead_key_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AeadKey(**kwargs)  # type: ignore[arg-type]


def test_sa_validation() -> None:
    a4, b4 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
    b6 = ipaddress.ip_address("2001:db8::2")
    with pytest.raises(ValueError, match="same IP version"):
        SecurityAssociation(a4, b6, 0x1000, 1, AeadKey(K20))
    with pytest.raises(ValueError, match="at least 0x100"):
        SecurityAssociation(a4, b4, 0xFF, 1, AeadKey(K20))
    with pytest.raises(ValueError, match="32-bit"):
        SecurityAssociation(a4, b4, 1 << 32, 1, AeadKey(K20))
    with pytest.raises(ValueError, match="outside mask"):
        Mark(0x3, 0x1)
    with pytest.raises(ValueError, match="no templates"):
        Policy(Selector.any(), Direction.OUT, action=Action.BLOCK, templates=(Template(1),))


# ---------------------------------------------------------------- round trips

# A NEWSA/NEWPOLICY request has the layout of the kernel's dump items, so
# decode(encode(x)) == x must hold for every value we can build.

v4: st.SearchStrategy[IPAddress] = st.builds(ipaddress.IPv4Address, st.integers(1, 2**32 - 1))
v6: st.SearchStrategy[IPAddress] = st.builds(ipaddress.IPv6Address, st.integers(1, 2**128 - 1))
marks = st.none() | st.builds(
    lambda m, v: Mark(v & m, m), st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1)
)
keys = st.builds(
    AeadKey,
    st.sampled_from([20, 28, 36]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.sampled_from([64, 96, 128]),
)


@st.composite
def sas(draw: st.DrawFn) -> SecurityAssociation:
    addrs = draw(st.sampled_from([v4, v6]))
    src, dst = draw(addrs), draw(addrs)
    selector = draw(
        st.none() | st.just(Selector.hosts(src, dst, dport=draw(st.integers(1, 65535))))
    )
    return SecurityAssociation(
        src,
        dst,
        draw(st.integers(0x100, 2**32 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        draw(keys),
        mark=draw(marks),
        selector=selector,
        replay_window=draw(st.integers(0, 32)),
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    addrs = draw(st.sampled_from([v4, v6]))
    src, dst = draw(addrs), draw(addrs)
    selector = Selector.hosts(src, dst, dport=draw(st.integers(0, 65535)))
    block = draw(st.booleans())
    templates: tuple[Template, ...] = ()
    if not block:
        templates = (
            Template(
                draw(st.integers(0, 2**32 - 1)),
                draw(st.none() | st.just(src)),
                draw(st.none() | st.just(dst)),
                spi=draw(st.integers(0, 2**32 - 1)),
                optional=draw(st.booleans()),
            ),
        )
    return Policy(
        selector,
        draw(st.sampled_from(list(Direction))),
        priority=draw(st.integers(0, 2**32 - 1)),
        action=Action.BLOCK if block else Action.ALLOW,
        templates=templates,
        mark=draw(marks),
    )


@given(sas())
def test_sa_round_trip(sa: SecurityAssociation) -> None:
    assert wire.decode_sa(wire.encode_sa(sa)) == sa


@given(policies())
def test_policy_round_trip(policy: Policy) -> None:
    assert wire.decode_policy(wire.encode_policy(policy)) == policy
