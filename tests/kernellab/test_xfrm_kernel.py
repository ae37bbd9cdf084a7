"""driver.kernel.xfrm against a kernel with ESP (run inside kernel-lab).

Two namespaces joined by a veth stand for two hosts. An encrypted VXLAN uses
UDP port 4790 and a plain one 4789, the split docs/encryption-kernel.md
recommends: xfrm selects on ports, so the encrypted networks get their own.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from driver.kernel.xfrm import (
    NEW_NETNS,
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
    probe,
)
from tests.kernellab.netlab import (
    ENCRYPTED_PORT,
    PLAIN_PORT,
    REQID,
    A,
    B,
    Host,
    Pair,
    block_policy,
    capture,
    in_policy,
    out_policy,
    out_sa,
    parse_ping,
    ping,
)

pytestmark = pytest.mark.kernellab

SPI_AB_1, SPI_BA_1 = 0x01001002, 0x01002001
SPI_AB_2, SPI_BA_2 = 0x02001002, 0x02002001


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    made = Pair(request.node.name[5:9])
    try:
        yield made
    finally:
        made.close()


def install(pair: Pair, port: int, spis: tuple[int, int], keys: tuple[bytes, bytes]) -> None:
    """SAs and policies for a<->b on ``port``: inbound SAs on both hosts before any outbound."""
    a, b = pair.hosts
    sides = ((a, b, spis[0], spis[1], keys[0], keys[1]), (b, a, spis[1], spis[0], keys[1], keys[0]))
    for me, peer, _, spi_in, _, key_in in sides:
        me.xfrm.add_sa(out_sa(peer, me, spi_in, key_in))
    for me, peer, spi_out, _, key_out, _ in sides:
        me.xfrm.update_policy(in_policy(port))
        me.xfrm.add_sa(out_sa(me, peer, spi_out, key_out))
        me.xfrm.update_policy(out_policy(me, peer, spi_out, port))


def assert_nothing_left(host: Host) -> None:
    assert host.xfrm.list_sas() == []
    assert host.xfrm.list_policies() == []
    assert host.xfrm_dump().strip() == "", host.xfrm_dump()


def test_probe_says_supported() -> None:
    result = probe()
    assert result.supported, result.detail
    assert result.missing == ()


def test_encrypted_and_plain_vxlan_side_by_side(pair: Pair, tmp_path: Path) -> None:
    a, b = pair.hosts
    pair.vxlan("vxe", 42, ENCRYPTED_PORT, "10.42.0")
    pair.vxlan("vxp", 43, PLAIN_PORT, "10.43.0")

    # 1. The block policies come first: with no SA yet, nothing leaves in clear.
    for h in pair.hosts:
        h.xfrm.add_policy(block_policy(ENCRYPTED_PORT))
    with capture(b, tmp_path) as before:
        blocked = ping(a, "10.42.0.2", count=3)
    assert blocked.received == 0
    assert before.udp_to(ENCRYPTED_PORT) == []
    assert before.esp_spis() == []

    # 2. SAs and peer policies: the encrypted network is ESP only, the plain one stays plain.
    install(
        pair,
        ENCRYPTED_PORT,
        (SPI_AB_1, SPI_BA_1),
        (secrets.token_bytes(20), secrets.token_bytes(20)),
    )
    with capture(b, tmp_path) as wire:
        encrypted = ping(a, "10.42.0.2")
        plain = ping(a, "10.43.0.2")
    assert (encrypted.sent, encrypted.received) == (4, 4), encrypted.output
    assert (plain.sent, plain.received) == (4, 4), plain.output
    assert set(wire.esp_spis()) == {SPI_AB_1, SPI_BA_1}
    assert wire.udp_to(ENCRYPTED_PORT) == []
    assert len(wire.udp_to(PLAIN_PORT)) >= 8  # 4 requests + 4 replies, in clear

    # 3. Delete everything through the module: both hosts are left with nothing.
    for h in pair.hosts:
        policies = h.xfrm.flush_policies(lambda p: p.selector.dport == ENCRYPTED_PORT)
        sas = h.xfrm.flush_sas(lambda sa: sa.reqid == REQID)
        assert sorted(p.direction for p in policies) == [Direction.IN, Direction.OUT, Direction.OUT]
        assert len(sas) == 2
        assert_nothing_left(h)


def test_plaintext_vxlan_to_the_encrypted_port_is_dropped(pair: Pair, tmp_path: Path) -> None:
    a, b = pair.hosts
    pair.vxlan("vxe", 42, ENCRYPTED_PORT, "10.42.0")
    # b accepts the encrypted port only through one of our SAs; a sends in clear.
    b.xfrm.add_policy(in_policy(ENCRYPTED_PORT))
    mismatches = b.xfrm_stat()["XfrmInTmplMismatch"]

    with capture(b, tmp_path) as wire:
        dropped = ping(a, "10.42.0.2", count=3)
    assert dropped.received == 0
    assert wire.udp_to(ENCRYPTED_PORT), "the plaintext VXLAN did reach b's link"
    assert b.xfrm_stat()["XfrmInTmplMismatch"] > mismatches, "b's in policy dropped it"

    # Control: without the in policy the same traffic gets through.
    assert b.xfrm.delete_policy(in_policy(ENCRYPTED_PORT).id)
    assert ping(a, "10.42.0.2", count=3).received == 3


def test_a_policy_applies_at_once_to_a_vxlan_route_already_in_use(
    pair: Pair, tmp_path: Path
) -> None:
    # The VXLAN device caches its route to each remote; a policy added while
    # traffic flows must still govern the very next packet.
    a, b = pair.hosts
    pair.vxlan("vxe", 42, ENCRYPTED_PORT, "10.42.0")
    assert ping(a, "10.42.0.2", count=3).received == 3  # in clear: no policy yet
    a.xfrm.add_policy(block_policy(ENCRYPTED_PORT))
    with capture(b, tmp_path) as wire:
        assert ping(a, "10.42.0.2", count=3).received == 0
    assert [line for line in wire.udp_to(ENCRYPTED_PORT) if f"{A}." in line.split(">")[0]] == []


def test_rotation_during_a_ping_loses_no_packet(pair: Pair, tmp_path: Path) -> None:
    a, b = pair.hosts
    pair.vxlan("vxe", 42, ENCRYPTED_PORT, "10.42.0")
    old = (secrets.token_bytes(20), secrets.token_bytes(20))
    new = (secrets.token_bytes(20), secrets.token_bytes(20))
    install(pair, ENCRYPTED_PORT, (SPI_AB_1, SPI_BA_1), old)
    assert ping(a, "10.42.0.2", count=2).received == 2  # ARP settled

    count = 200  # 10 s: room for a slow rotation on a loaded machine
    with capture(b, tmp_path) as wire:
        pinger = subprocess.Popen(
            ["ip", "netns", "exec", a.ns, "ping", "-n", "-c", str(count), "-i", "0.05",
             "-W", "2", "10.42.0.2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert pinger.stdout is not None
        seen: list[str] = []
        try:
            # Rotate only once echoes are flowing, so the rotation is inside the ping.
            while not any("icmp_seq=10 " in line for line in seen):
                line = pinger.stdout.readline()
                assert line, "".join(seen)
                seen.append(line)
            # 1. New inbound SAs on every host.
            b.xfrm.add_sa(out_sa(a, b, SPI_AB_2, new[0]))
            a.xfrm.add_sa(out_sa(b, a, SPI_BA_2, new[1]))
            # 2. Each host switches outbound: new SA, then repoint its policy in one step.
            a.xfrm.add_sa(out_sa(a, b, SPI_AB_2, new[0]))
            a.xfrm.update_policy(out_policy(a, b, SPI_AB_2, ENCRYPTED_PORT))
            b.xfrm.add_sa(out_sa(b, a, SPI_BA_2, new[1]))
            b.xfrm.update_policy(out_policy(b, a, SPI_BA_2, ENCRYPTED_PORT))
            # 3. Prune the old SAs once packets sealed with them have landed.
            time.sleep(0.5)
            for me, peer, spi_out, spi_in in (
                (a, b, SPI_AB_1, SPI_BA_1),
                (b, a, SPI_BA_1, SPI_AB_1),
            ):
                assert me.xfrm.delete_sa(out_sa(me, peer, spi_out, old[0]).id)
                assert me.xfrm.delete_sa(out_sa(peer, me, spi_in, old[0]).id)
            assert pinger.poll() is None, "the ping ended before the rotation did"
            rest, _ = pinger.communicate(timeout=120)
            output = "".join(seen) + rest
        finally:
            if pinger.poll() is None:
                pinger.kill()
                pinger.wait()
    result = parse_ping(output)
    assert (result.sent, result.received) == (count, count), result.output
    spis = wire.esp_spis()
    assert {SPI_AB_1, SPI_BA_1, SPI_AB_2, SPI_BA_2} <= set(spis)
    assert set(spis[-10:]) <= {SPI_AB_2, SPI_BA_2}
    assert wire.udp_to(ENCRYPTED_PORT) == []
    for h in pair.hosts:
        assert {sa.spi for sa in h.xfrm.list_sas()} == {SPI_AB_2, SPI_BA_2}


def test_module_semantics_against_the_kernel() -> None:
    key, other_key = secrets.token_bytes(20), secrets.token_bytes(36)
    sa = SecurityAssociation(A, B, SPI_AB_1, REQID, AeadKey(key, 64))
    marked = SecurityAssociation(
        B, A, SPI_BA_1, REQID, AeadKey(other_key, 128),
        mark=Mark(0x534E0000, 0xFFFF0000), selector=Selector.hosts(B, A, dport=4790),
    )  # fmt: skip
    a6, b6 = ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::2")
    sa6 = SecurityAssociation(a6, b6, SPI_AB_1, REQID, AeadKey(key, 96))
    out = Policy(
        Selector.hosts(A, B, dport=4790), Direction.OUT, priority=100,
        templates=(Template(REQID, A, B, spi=SPI_AB_1),),
    )  # fmt: skip
    rotated = replace(out, templates=(Template(REQID, A, B, spi=SPI_AB_2),))
    inbound = Policy(Selector.any(4, dport=4790), Direction.IN, 100, templates=(Template(REQID),))
    block = Policy(Selector.any(4, dport=4790), Direction.OUT, 1000, Action.BLOCK)

    with Xfrm(NEW_NETNS) as x:
        assert x.list_sas() == [] and x.list_policies() == []

        x.add_sa(sa)
        with pytest.raises(XfrmError) as exists:
            x.add_sa(sa)
        assert exists.value.errno == errno.EEXIST
        assert x.get_sa(sa.id) == sa
        assert x.ensure_sa(sa) is False
        with pytest.raises(XfrmError) as conflict:
            x.ensure_sa(replace(sa, aead=AeadKey(other_key, 64)))
        assert conflict.value.errno == errno.EEXIST
        assert key.hex() not in str(conflict.value) and other_key.hex() not in str(conflict.value)
        # UPDSA of an existing SA is accepted, but the kernel keeps the old key:
        # keys are rotated with new SPIs, never updated in place.
        x.update_sa(replace(sa, aead=AeadKey(other_key[:20], 64)))
        assert x.get_sa(sa.id) == sa
        with pytest.raises(XfrmError) as missing:
            x.update_sa(replace(sa, spi=0x0FFFFFFF))
        assert missing.value.errno == errno.ESRCH
        assert x.ensure_sa(marked) is True
        assert x.get_sa(marked.id) == marked
        x.add_sa(sa6)
        assert sorted(x.list_sas(), key=str) == sorted([sa, marked, sa6], key=str)

        x.add_policy(out)
        with pytest.raises(XfrmError) as dup:
            x.add_policy(out)
        assert dup.value.errno == errno.EEXIST
        assert x.get_policy(out.id) == out
        x.update_policy(rotated)
        assert x.get_policy(out.id) == rotated
        assert x.ensure_policy(rotated) is False
        assert x.ensure_policy(inbound) is True
        x.add_policy(block)
        assert sorted(x.list_policies(), key=str) == sorted([rotated, inbound, block], key=str)

        for p in (rotated, inbound, block):
            assert x.delete_policy(p.id) is True
            assert x.delete_policy(p.id) is False
            assert x.get_policy(p.id) is None
        for s in (sa, marked, sa6):
            assert x.delete_sa(s.id) is True
            assert x.delete_sa(s.id) is False
            assert x.get_sa(s.id) is None
        assert x.list_sas() == [] and x.list_policies() == []


def test_an_unknown_aead_is_unsupported_and_leaves_nothing() -> None:
    bogus = AeadKey(secrets.token_bytes(20), 64, name="rfc4106(gcm(nosuchcipher))")
    with Xfrm(NEW_NETNS) as x:
        with pytest.raises(XfrmUnsupported) as caught:
            x.add_sa(SecurityAssociation(A, B, SPI_AB_1, REQID, bogus))
        assert caught.value.missing == ("rfc4106(gcm(nosuchcipher))",)
        assert x.list_sas() == []
