"""The two kernels seen through one harness, on hosts made of network namespaces
(:class:`testbed.kernelhost.NetlinkHost`)."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from pathlib import Path
from typing import Any, Protocol

from core.iptypes import IPInterface, IPNetwork
from driver import names
from driver.kernel import nsfs
from driver.kernel.fake import FakeKernel
from driver.kernel.port import Kernel
from testbed.kernelhost import ROUTED
from testbed.kernelhost import UNDERLAY_IF as UNDERLAY_IF
from testbed.kernelhost import NetlinkHost as NetlinkHost
from testbed.mounts import mounts_under as mounts_under
from testbed.netns import ipr_in as ipr_in
from testbed.netns import link as link

# The harness's host: an underlay interface with this address and MTU carries
# the default route, plus one more routed network.
UNDERLAY_ADDR = ipaddress.ip_interface("198.51.100.2/24")
UNDERLAY_GW = "198.51.100.1"
UNDERLAY_MTU = 1450
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def addresses(ipr: Any, index: int) -> set[IPInterface]:
    found: set[IPInterface] = set()
    for msg in ipr.addr("dump", index=index):
        iface = ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
        if not (iface.version == 6 and iface.ip.is_link_local):
            found.add(iface)
    return found


def nsexec(path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a setup command inside the namespace (tests only; product code never shells out)."""
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv], check=True, capture_output=True, text=True, timeout=30
    )


def write_sysctl(path: Path, key: str, value: str) -> None:
    """Set a per-namespace sysctl: /proc/sys/net resolves against the writer's namespace."""

    def write() -> None:
        Path("/proc/sys", *key.split(".")).write_text(value)

    nsfs.run_in(path, write)


def udp_echo(
    client_ns: Path,
    server_ns: Path,
    server_ip: str,
    tries: int = 5,
    timeout: float = 1.0,
    size: int = 32,
) -> bool:
    """Send a ``size``-byte datagram from one namespace to another and get it echoed back.

    Bounded: at most ``tries`` round trips of ``timeout`` seconds each. A datagram that
    arrives after its own try timed out (its first ARP request was lost and retransmitted
    1 s later) still proves the path: any echo of any datagram sent counts.
    """
    family = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    server = nsfs.socket_in(server_ns, family, socket.SOCK_DGRAM)
    client = nsfs.socket_in(client_ns, family, socket.SOCK_DGRAM)
    sent: set[bytes] = set()
    with server, client:
        server.bind((server_ip, 0))
        port = server.getsockname()[1]
        server.settimeout(timeout)
        client.settimeout(timeout)
        for attempt in range(tries):
            payload = f"swarmnet {attempt} ".encode().ljust(size, b".")
            sent.add(payload)
            client.sendto(payload, (server_ip, port))
            try:
                data, peer = server.recvfrom(65536)
                server.sendto(data, peer)
                reply = client.recv(65536)
            except TimeoutError:
                continue
            if reply in sent:
                return True
    return False


class Harness(Protocol):
    """One kernel under test, plus the inspection the Kernel port does not offer."""

    name: str
    kernel: Kernel

    def bridge(self, network_id: str) -> tuple[int, set[IPInterface]]:
        """MTU and addresses of the network's bridge."""
        ...

    def host_links(self) -> set[str]:
        """Our links in the host namespace."""
        ...

    def host_link(self, name: str) -> tuple[int, str] | None:
        """MTU and MAC of a host-namespace link, None if it is not there."""
        ...

    def join(self, network_id: str, endpoint_id: str) -> None:
        """Docker's part of Join: the host side leaves the host namespace."""
        ...

    def expected_host_networks(self) -> set[IPNetwork]: ...

    def settle(self) -> None:
        """Wait for work the kernel does in the background (retired veths)."""
        ...


class FakeHarness:
    name = "fake"

    def __init__(self) -> None:
        self.fake = FakeKernel(
            underlay_mtu=UNDERLAY_MTU,
            host_networks=[LOOPBACK, UNDERLAY_ADDR.network, ROUTED],
        )
        self.kernel: Kernel = self.fake

    def bridge(self, network_id: str) -> tuple[int, set[IPInterface]]:
        spec = self.fake.networks[names.short(network_id)].spec
        return spec.mtu, set(spec.bridge_addresses)

    def host_links(self) -> set[str]:
        return set(self.fake.host_links)

    def host_link(self, name: str) -> tuple[int, str] | None:
        if name not in self.fake.host_links:
            return None
        for net in self.fake.networks.values():
            for eid, spec in net.endpoints.items():
                if names.veth_host(eid) == name:
                    return spec.mtu, spec.mac
        return None

    def join(self, network_id: str, endpoint_id: str) -> None:
        self.fake.move_to_container(endpoint_id)

    def expected_host_networks(self) -> set[IPNetwork]:
        return {LOOPBACK, UNDERLAY_ADDR.network, ROUTED}

    def settle(self) -> None:
        return None


class NetlinkHarness:
    name = "netlink"

    def __init__(self, root: Path) -> None:
        self.host = NetlinkHost(root)
        self.kernel: Kernel = self.host.kernel
        try:
            self.host.add_underlay(UNDERLAY_ADDR, UNDERLAY_MTU, UNDERLAY_GW)
        except BaseException:
            self.host.close()
            raise

    def bridge(self, network_id: str) -> tuple[int, set[IPInterface]]:
        with ipr_in(self.host.netns_dir / names.netns(network_id)) as ipr:
            br = link(ipr, names.BRIDGE)
            assert br is not None
            return int(br.get("mtu")), addresses(ipr, br["index"])

    def host_links(self) -> set[str]:
        return self.host.our_links()

    def host_link(self, name: str) -> tuple[int, str] | None:
        with ipr_in(self.host.ns) as ipr:
            found = link(ipr, name)
            return None if found is None else (int(found.get("mtu")), str(found.get("address")))

    def join(self, network_id: str, endpoint_id: str) -> None:
        self.host.join(endpoint_id)

    def expected_host_networks(self) -> set[IPNetwork]:
        return {LOOPBACK, UNDERLAY_ADDR.network, ROUTED}

    def settle(self) -> None:
        self.host.kernel.settle()
