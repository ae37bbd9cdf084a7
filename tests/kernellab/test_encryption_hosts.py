"""Encrypted networks between hosts, on a kernel with ESP (run inside kernel-lab).

Three namespaces on one underlay bridge stand for three hosts, each running
the driver service with the netlink kernel and the real xfrm, sharing one
store (tests/kernellab/hostlab.py). Every xfrm object here is made by the
driver; the test only sets up the topology and looks (ping, tcpdump, ip xfrm).
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver import mac as macs
from driver.config import EncryptionConfig
from driver.ipsec_keys import REQID, spi
from driver.kernel import nsfs
from driver.kernel.xfrm.types import Direction
from tests.kernellab.hostlab import Endpoint, HostLab, LabHost, nsrun
from tests.kernellab.netlab import PingResult, parse_ping

pytestmark = pytest.mark.kernellab

ENC = "e1e1e1e1e1e1e1e1e1e1e1e1e"  # encrypted, on all three hosts
PLAIN = "p2p2p2p2p2p2p2p2p2p2p2p2p"  # plain, on hosts 1 and 2
ENC_VNI, PLAIN_VNI = 300, 301
PORT, PLAIN_PORT = 4790, 4789
# Fast rounds so a rotation completes within a few seconds; the gap is the test's to keep.
CONFIG = EncryptionConfig(poll_interval=0.5, prune_grace=1.0, rotation_min_gap=0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostLab]:
    made = HostLab(tmp_path_factory.mktemp("hosts"), 3, CONFIG)
    try:
        yield made
    finally:
        made.close()


class Nets:
    def __init__(self, lab: HostLab) -> None:
        self.lab = lab
        self.enc: list[Endpoint] = []
        self.plain: list[Endpoint] = []
        self._owners: list[tuple[LabHost, Endpoint]] = []
        for i, host in enumerate(lab.hosts, start=1):
            host.create_network(ENC, ENC_VNI, "10.30.0.0/24", encrypted=True)
            self.enc.append(host.join(ENC, f"e{i}".ljust(64, "0"), f"10.30.0.{10 + i}/24"))
            self._owners.append((host, self.enc[-1]))
        for i, host in enumerate(lab.hosts[:2], start=1):
            host.create_network(PLAIN, PLAIN_VNI, "10.31.0.0/24", encrypted=False)
            self.plain.append(host.join(PLAIN, f"f{i}".ljust(64, "0"), f"10.31.0.{10 + i}/24"))
            self._owners.append((host, self.plain[-1]))
        lab.hub.deliver()

    def remove(self) -> None:
        for host, ep in self._owners:
            host.leave(ep)  # idempotent, as Docker's retries need
        self.lab.hub.deliver()
        for host in self.lab.hosts:
            host.service.delete_network(ENC)
            host.service.delete_network(PLAIN)
        self.lab.hub.deliver()


@pytest.fixture
def nets(lab: HostLab) -> Iterator[Nets]:
    made = Nets(lab)
    try:
        yield made
    finally:
        made.remove()
        for host in lab.hosts:
            assert host.xfrm() == ([], []), "a network delete left xfrm objects behind"


def ping(ep: Endpoint, target: Endpoint, count: int = 3, interval: float = 0.2) -> PingResult:
    done = nsrun(
        ep.container, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "3",
        str(target.address.ip), timeout=count * interval + 60,
    )  # fmt: skip
    return parse_ping(done.stdout + done.stderr)


def assert_clean(host: LabHost) -> None:
    assert host.xfrm() == ([], [])
    assert host.ip_xfrm().strip() == "", host.ip_xfrm()
    assert host.node.kernel.network_ids() == set()
    assert host.node.our_links() == set()


def test_encrypted_network_is_esp_on_the_wire_and_the_plain_one_is_not(
    lab: HostLab, nets: Nets, tmp_path: Path
) -> None:
    for host in lab.hosts:
        _, policies = host.xfrm()
        outs = [p for p in policies if p.direction == Direction.OUT and p.templates]
        assert len(outs) == 2  # one per other host
    for ep, mtu in ((nets.enc[0], 1424), (nets.plain[0], 1450)):  # ESP takes 26 more
        shown = nsrun(ep.container, "ip", "-o", "link", "show", "eth0").stdout
        assert f" mtu {mtu} " in shown, shown

    with lab.capture(tmp_path) as wire:
        to_b, to_c = ping(nets.enc[0], nets.enc[1]), ping(nets.enc[0], nets.enc[2])
        plain = ping(nets.plain[0], nets.plain[1])
    for result in (to_b, to_c, plain):
        assert (result.sent, result.received) == (3, 3), result.output
    # Indexes are claimed in the order the hosts first met: 1, 2, 3. Generation 1.
    assert set(wire.esp_spis()) == {
        spi(1, 1, 2), spi(1, 2, 1), spi(1, 1, 3), spi(1, 3, 1)
    }  # fmt: skip
    assert wire.udp_to(PORT) == [], "encrypted network traffic in clear"
    plain_lines = wire.udp_to(PLAIN_PORT)
    assert len(plain_lines) >= 6 and all(f"vni {PLAIN_VNI}" in line for line in plain_lines)
    assert not any(f"vni {ENC_VNI}" in line for line in wire.lines)


def vxlan_frame(vni: int, dst: Endpoint, port: int, payload: bytes) -> bytes:
    """A VXLAN packet carrying Ethernet/IPv4/UDP to ``dst``'s address and ``port``."""
    src_ip = socket.inet_aton(str(dst.address.network.network_address + 99))
    dst_ip = socket.inet_aton(str(dst.address.ip))
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src_ip, dst_ip)
    words = struct.unpack("!10H", header)
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    header = header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]
    dst_mac = bytes.fromhex(macs.from_ip(dst.address.ip).replace(":", ""))
    ethernet = dst_mac + bytes.fromhex("02420a1e0063") + b"\x08\x00"
    return struct.pack("!II", 0x08000000, vni << 8) + ethernet + header + udp


def delivered(wire: Path, host: LabHost, frame: bytes, port: int, target: Endpoint) -> bool:
    """Send ``frame`` from a machine on the underlay to ``host``:``port``; did ``target`` get it?

    Not from another host: its own out policy would rightly seal the packet with its SA.
    """
    listener = nsfs.socket_in(target.container, socket.AF_INET, socket.SOCK_DGRAM)
    injector = nsfs.socket_in(wire, socket.AF_INET, socket.SOCK_DGRAM)
    with listener, injector:
        listener.bind((str(target.address.ip), 9999))
        listener.settimeout(1.5)
        for _ in range(2):
            injector.sendto(frame, (str(host.vtep), port))
            try:
                return listener.recv(2048) == b"injected"
            except TimeoutError:
                continue
    return False


def test_injected_plaintext_vxlan_to_the_encrypted_port_is_dropped(
    lab: HostLab, nets: Nets
) -> None:
    b = lab.hosts[1]
    # Control: the same injection into the plain network gets through.
    plain = vxlan_frame(PLAIN_VNI, nets.plain[1], 9999, b"injected")
    assert delivered(lab.switch, b, plain, PLAIN_PORT, nets.plain[1])

    mismatches = b.xfrm_stat()["XfrmInTmplMismatch"]
    forged = vxlan_frame(ENC_VNI, nets.enc[1], 9999, b"injected")
    assert not delivered(lab.switch, b, forged, PORT, nets.enc[1])
    assert b.xfrm_stat()["XfrmInTmplMismatch"] > mismatches, "b's in policy dropped it"
    # To the plain port, the encrypted VNI has no device: nothing there either.
    assert not delivered(lab.switch, b, forged, PLAIN_PORT, nets.enc[1])


def generation_bytes(host: LabHost) -> set[int]:
    """The SPI top bytes (generation + 1) of every SA on the host."""
    return {sa.spi >> 24 for sa in host.xfrm()[0]}


def test_a_key_rotation_during_a_ping_loses_no_packet(
    lab: HostLab, nets: Nets, tmp_path: Path
) -> None:
    a, b, c = lab.hosts
    src, dst = nets.enc[0], nets.enc[1]
    before = {sa.spi for sa in a.xfrm()[0]}
    count = 300  # 15 s: room for a few background rounds on an emulated CPU
    with lab.capture(tmp_path) as wire:
        pinger = subprocess.Popen(
            ["nsenter", f"--net={src.container}", "ping", "-n", "-c", str(count), "-i", "0.05",
             "-W", "3", str(dst.address.ip)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert pinger.stdout is not None
        seen: list[str] = []
        try:
            while not any("icmp_seq=10 " in line for line in seen):
                line = pinger.stdout.readline()
                assert line, "".join(seen)
                seen.append(line)
            rotation = b.service.rotate_keys()  # on another host than the pinger's
            assert (rotation.previous, rotation.current) == (1, 2)
            # The hosts' background rounds do the rest: inbound, switch, prune.
            deadline = time.monotonic() + 60
            while not all(generation_bytes(h) == {3} for h in (a, b, c)):
                assert time.monotonic() < deadline, [h.ip_xfrm() for h in (a, b)]
                time.sleep(0.3)
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
    old, new = {spi(1, 1, 2), spi(1, 2, 1)}, {spi(2, 1, 2), spi(2, 2, 1)}
    assert old <= set(spis) and new <= set(spis), sorted(set(map(hex, spis)))
    assert set(spis[-20:]) <= new
    assert wire.udp_to(PORT) == []
    assert before.isdisjoint({sa.spi for sa in a.xfrm()[0]})


def test_network_delete_leaves_no_sa_or_policy_on_any_host(lab: HostLab, nets: Nets) -> None:
    a, b, c = lab.hosts
    # c leaves the encrypted network: the a-c and b-c pairs go on every side.
    c.leave(nets.enc[2])
    lab.hub.deliver()
    c.service.delete_network(ENC)
    lab.hub.deliver()
    assert_clean(c)
    for host in (a, b):
        sas, policies = host.xfrm()
        assert all(c.vtep not in (sa.src, sa.dst) for sa in sas)
        assert all(all(t.dst != c.vtep for t in p.templates) for p in policies)
        assert {sa.reqid for sa in sas} == {REQID} and len(sas) == 2  # a-b still encrypted
    assert ping(nets.enc[0], nets.enc[1], count=2).received == 2

    nets.remove()
    for host in lab.hosts:
        assert_clean(host)
        text = host.ip_xfrm()
        assert not re.search(r"dport 4790|proto esp", text), text
