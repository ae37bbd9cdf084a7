"""Two hosts as network namespaces joined by a veth, for the xfrm kernel-lab tests.

The topology (namespaces, veth, VXLAN devices) is set up with ``ip``, and
inspected with ``ip``, ``tcpdump`` and ``ping``; every xfrm object is made
through ``driver.kernel.xfrm``. ``Pair.close()`` deletes both namespaces,
which takes the veth, the VXLAN devices, SAs and policies with them, even
when a test failed half-way.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from driver.kernel.xfrm import (
    Action,
    AeadKey,
    Direction,
    Policy,
    SecurityAssociation,
    Selector,
    Template,
    Xfrm,
)
from testbed.capture import Capture as Capture
from testbed.capture import tcpdump

A = ipaddress.IPv4Address("192.0.2.1")
B = ipaddress.IPv4Address("192.0.2.2")
REQID = 0x534E01
PLAIN_PORT = 4789
ENCRYPTED_PORT = 4790
PEER_PRIORITY = 100
BLOCK_PRIORITY = 1000


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    ns: str
    addr: ipaddress.IPv4Address
    veth: str
    xfrm: Xfrm = field(init=False)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.ns}"

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *cmd], capture_output=True, text=True, timeout=timeout
        )

    def xfrm_dump(self) -> str:
        """What `ip xfrm state` and `ip xfrm policy` show (an independent reader)."""
        return ip("-n", self.ns, "xfrm", "state") + ip("-n", self.ns, "xfrm", "policy")

    def xfrm_stat(self) -> dict[str, int]:
        text = self.run("cat", "/proc/net/xfrm_stat").stdout
        return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


class Pair:
    """Hosts a (192.0.2.1) and b (192.0.2.2) on one veth link."""

    def __init__(self, tag: str) -> None:
        tag = f"{tag}{os.getpid() % 10000}"
        self.a = Host(f"xla{tag}", A, "ula")
        self.b = Host(f"xlb{tag}", B, "ulb")
        self._made: list[Host] = []
        try:
            for h in (self.a, self.b):
                ip("netns", "add", h.ns)
                self._made.append(h)
                ip("-n", h.ns, "link", "set", "lo", "up")
            ip("link", "add", "ula", "netns", self.a.ns, "type", "veth", "peer", "name", "ulb",
               "netns", self.b.ns)  # fmt: skip
            for h in (self.a, self.b):
                ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", h.veth)
                ip("-n", h.ns, "link", "set", h.veth, "up")
                h.xfrm = Xfrm(h.path)
        except BaseException:
            self.close()
            raise

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    def vxlan(self, name: str, vni: int, port: int, overlay: str) -> None:
        """A VXLAN device on both hosts; a gets <overlay>.1/24, b gets <overlay>.2/24."""
        for h, peer, last in ((self.a, self.b, 1), (self.b, self.a, 2)):
            vxlan = f"id {vni} local {h.addr} remote {peer.addr} dstport {port} dev {h.veth}"
            ip("-n", h.ns, "link", "add", name, "type", "vxlan", *vxlan.split())
            ip("-n", h.ns, "addr", "add", f"{overlay}.{last}/24", "dev", name)
            ip("-n", h.ns, "link", "set", name, "up")

    def close(self) -> None:
        for h in self._made:
            if hasattr(h, "xfrm"):
                h.xfrm.close()
            ip("netns", "del", h.ns, check=False)
        self._made.clear()


def out_sa(src: Host, dst: Host, spi: int, key: bytes) -> SecurityAssociation:
    return SecurityAssociation(src.addr, dst.addr, spi, REQID, AeadKey(key, 64))


def out_policy(src: Host, dst: Host, spi: int, port: int) -> Policy:
    """src -> dst VXLAN on ``port`` must leave as ESP with exactly SA ``spi``."""
    return Policy(
        Selector.hosts(src.addr, dst.addr, dport=port),
        Direction.OUT,
        priority=PEER_PRIORITY,
        templates=(Template(REQID, src.addr, dst.addr, spi=spi),),
    )


def in_policy(port: int) -> Policy:
    """VXLAN to ``port`` from anyone is accepted only if it arrived through one of our SAs."""
    return Policy(
        Selector.any(4, dport=port), Direction.IN, priority=PEER_PRIORITY,
        templates=(Template(REQID),),
    )  # fmt: skip


def block_policy(port: int) -> Policy:
    """Outbound VXLAN to ``port`` with no peer policy is dropped, never sent in clear."""
    return Policy(
        Selector.any(4, dport=port), Direction.OUT, priority=BLOCK_PRIORITY, action=Action.BLOCK
    )


@contextmanager
def capture(host: Host, workdir: Path) -> Iterator[Capture]:
    """tcpdump on the host's underlay veth for the duration of the block."""
    with tcpdump(
        ["ip", "netns", "exec", host.ns],
        host.veth,
        workdir / f"{host.ns}.pcap",
        workdir / f"{host.ns}.tcpdump.err",
        timeout=30,
    ) as result:
        yield result


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    output: str


def parse_ping(output: str) -> PingResult:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    if not m:
        raise AssertionError(f"cannot read ping output:\n{output}")
    return PingResult(int(m.group(1)), int(m.group(2)), output)


def ping(host: Host, target: str, count: int = 4, interval: float = 0.2) -> PingResult:
    done = host.run(
        "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", target,
        timeout=count * interval + 30,
    )  # fmt: skip
    return parse_ping(done.stdout + done.stderr)
