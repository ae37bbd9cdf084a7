"""Hosts made of network namespaces, and the two kernels seen through one harness.

A ``NetlinkHost`` is a fresh namespace standing in for the host, its own
directory for network namespaces, and a ``NetlinkKernel`` pointed at both, so
the machine's real host namespace is never touched. ``close()`` unmounts every
namespace it made: their links go with them, even when a test failed half-way.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from pyroute2 import IPRoute

from core.iptypes import IPInterface, IPNetwork
from driver import names
from driver.kernel import nsfs
from driver.kernel.fake import FakeKernel
from driver.kernel.netlink import NetlinkKernel
from driver.kernel.port import Kernel

# The harness's host: an underlay interface with this address and MTU carries
# the default route, plus one more routed network.
UNDERLAY_IF = "ul0"
UNDERLAY_ADDR = ipaddress.ip_interface("198.51.100.2/24")
UNDERLAY_GW = "198.51.100.1"
UNDERLAY_MTU = 1450
ROUTED = ipaddress.ip_network("203.0.113.0/24")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@contextmanager
def ipr_in(path: Path) -> Iterator[Any]:
    """A pyroute2 handle on the namespace at ``path`` (closed on exit)."""
    sock = nsfs.socket_in(path)
    with IPRoute(fileno=sock.detach(), groups=0) as ipr:
        yield ipr


def link(ipr: Any, name: str) -> Any:
    """The link called ``name``, or None."""
    found = ipr.link_lookup(ifname=name)
    return ipr.link("get", index=found[0])[0] if found else None


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

    Bounded: at most ``tries`` round trips of ``timeout`` seconds each.
    """
    family = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    server = nsfs.socket_in(server_ns, family, socket.SOCK_DGRAM)
    client = nsfs.socket_in(client_ns, family, socket.SOCK_DGRAM)
    with server, client:
        server.bind((server_ip, 0))
        port = server.getsockname()[1]
        server.settimeout(timeout)
        client.settimeout(timeout)
        for attempt in range(tries):
            payload = f"swarmnet {attempt} ".encode().ljust(size, b".")
            client.sendto(payload, (server_ip, port))
            try:
                data, peer = server.recvfrom(65536)
                server.sendto(data, peer)
                reply = client.recv(65536)
            except TimeoutError:
                continue
            if reply == payload:
                return True
    return False


class NetlinkHost:
    """A namespace playing the host, with a NetlinkKernel that lives in it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ns = root / "host"
        self.netns_dir = root / "netns"
        self.containers: list[Path] = []
        nsfs.create(self.ns)
        self.kernel = NetlinkKernel(netns_dir=self.netns_dir, host_netns=self.ns)
        try:
            with ipr_in(self.ns) as ipr:
                ipr.link("set", index=link(ipr, "lo")["index"], state="up")
        except BaseException:
            self.close()
            raise

    def add_underlay(self, address: IPInterface, mtu: int, gateway: str | None) -> None:
        with ipr_in(self.ns) as ipr:
            # No dummy driver in every kernel: a veth whose far end stays here too.
            ipr.link("add", ifname=UNDERLAY_IF, kind="veth", mtu=mtu, peer=f"{UNDERLAY_IF}far")
            ipr.link("set", index=link(ipr, f"{UNDERLAY_IF}far")["index"], state="up")
            index = link(ipr, UNDERLAY_IF)["index"]
            prefixlen = address.network.prefixlen
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=prefixlen)
            ipr.link("set", index=index, state="up")
            if gateway is not None:
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
                ipr.route("add", dst=str(ROUTED), gateway=gateway)

    def container(self, name: str) -> Path:
        path = self.root / "containers" / name
        nsfs.create(path)
        self.containers.append(path)
        with ipr_in(path) as ipr:
            ipr.link("set", index=link(ipr, "lo")["index"], state="up")
        return path

    def join(self, endpoint_id: str, address: IPInterface | None = None) -> Path:
        """Do what Docker does on Join: move the host side into a container and configure it."""
        container = self.container(names.short(endpoint_id))
        fd = nsfs.open_fd(container)
        try:
            with ipr_in(self.ns) as ipr:
                index = link(ipr, names.veth_host(endpoint_id))["index"]
                ipr.link("set", index=index, net_ns_fd=fd)
        finally:
            os.close(fd)
        with ipr_in(container) as ipr:
            index = link(ipr, names.veth_host(endpoint_id))["index"]
            ipr.link("set", index=index, ifname="eth0")
            if address is not None:
                ipr.addr(
                    "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
                )
            ipr.link("set", index=index, state="up")
        return container

    def our_links(self) -> set[str]:
        with ipr_in(self.ns) as ipr:
            return {
                str(msg.get("ifname"))
                for msg in ipr.link("dump")
                if names.is_ours(str(msg.get("ifname")))
            }

    def close(self) -> None:
        errors: list[BaseException] = []
        for network_id in sorted(self.kernel.network_ids()):
            try:
                self.kernel.remove_network(network_id)
            except Exception as exc:
                errors.append(exc)
        leftovers = list(self.netns_dir.iterdir()) if self.netns_dir.exists() else []
        for path in [*leftovers, *self.containers, self.ns]:
            try:
                nsfs.remove(path)
            except OSError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        left = mounts_under(self.root)
        assert not left, f"namespaces still mounted after cleanup: {left}"


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as info:
        points = [line.split()[4] for line in info]
    return [p for p in points if p.startswith(prefix)]


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
