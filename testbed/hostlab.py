"""Hosts made of namespaces on one underlay bridge, each running the driver service.

A *switch* namespace holds a bridge; each host is a :class:`testbed.kernelhost.NetlinkHost`
(its own namespace and a NetlinkKernel in it) with a veth ``ul0`` into that
bridge, address 192.0.2.<n>/24. Each host runs ``NetworkDriverService`` with the
real netlink kernel and the real xfrm (``NetlinkIpsec`` in its namespace); they
share one store and a Hub control plane. No dockerd: "Docker's part" of a Join
(moving the veth into a container namespace) is ``NetlinkHost.join``.

Used by tests/kernellab/test_encryption_hosts.py and bench/ipsec_bench.py.
Everything lives under one directory; ``close()`` removes every namespace.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.layout import StoreLayout
from driver.config import DriverConfig, EncryptionConfig
from driver.kernel import nsfs
from driver.kernel.ipsec import NetlinkIpsec
from driver.kernel.xfrm.types import Policy, SecurityAssociation
from driver.messages import CreateEndpoint, CreateNetwork, IPData, Join, NetworkOptions
from driver.service import NetworkDriverService
from plugin.app import STORE_ROOT
from plugin.store.memory import MemoryKV
from testbed.capture import Capture, tcpdump
from testbed.hub import Hub
from testbed.kernelhost import UNDERLAY_IF, NetlinkHost
from testbed.netns import ipr_in, link, nsrun

SWITCH_BRIDGE = "br0"
# The switch itself has an address on the underlay: a machine on the wire with no keys.
WIRE = ipaddress.IPv4Address("192.0.2.254")


def underlay_address(index: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"192.0.2.{index}")


@dataclass
class Endpoint:
    network_id: str
    endpoint_id: str
    address: ipaddress.IPv4Interface
    container: Path


class LabHost:
    def __init__(
        self, root: Path, index: int, switch: Path, shared: MemoryKV, hub: Hub,
        config: EncryptionConfig,
    ) -> None:  # fmt: skip
        self.index = index
        self.vtep = underlay_address(index)
        self.node = NetlinkHost(root / f"h{index}")
        try:
            self._underlay(switch)
            self.ipsec = NetlinkIpsec(self.node.ns)
            self.service = NetworkDriverService(
                DriverConfig(data_path_addr=self.vtep, encryption=config),
                self.node.kernel,
                MemoryKV(),
                shared,
                hub.plane(),
                self.ipsec,
                layout=StoreLayout(STORE_ROOT),
            )
            self.service.reconcile()
        except BaseException:
            self.node.close()
            raise

    @property
    def ns(self) -> Path:
        return self.node.ns

    def _underlay(self, switch: Path) -> None:
        port = f"h{self.index}"
        fd = nsfs.open_fd(switch)
        try:
            with ipr_in(self.ns) as ipr:
                ipr.link(
                    "add", ifname=UNDERLAY_IF, kind="veth", peer={"ifname": port, "net_ns_fd": fd}
                )
                index = link(ipr, UNDERLAY_IF)["index"]
                ipr.addr("add", index=index, address=str(self.vtep), prefixlen=24)
                ipr.link("set", index=index, state="up")
        finally:
            os.close(fd)
        with ipr_in(switch) as ipr:
            ipr.link(
                "set", index=link(ipr, port)["index"], master=link(ipr, SWITCH_BRIDGE)["index"],
                state="up",
            )  # fmt: skip

    def create_network(self, network_id: str, vni: int, subnet: str, *, encrypted: bool) -> None:
        net = ipaddress.ip_network(subnet)
        raw = {"swarmnet.vni": str(vni), **({"encrypted": ""} if encrypted else {})}
        options = NetworkOptions(raw=raw, vni=vni, encrypted=encrypted)
        gateway = ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}")
        self.service.create_network(
            CreateNetwork(network_id, options, ipv4=(IPData(pool=net, gateway=gateway),))
        )

    def join(self, network_id: str, endpoint_id: str, address: str) -> Endpoint:
        iface = ipaddress.IPv4Interface(address)
        self.service.create_endpoint(CreateEndpoint(network_id, endpoint_id, address=iface))
        self.service.join(Join(network_id, endpoint_id, sandbox_key="/lab"))
        container = self.node.join(endpoint_id, iface)
        return Endpoint(network_id, endpoint_id, iface, container)

    def leave(self, ep: Endpoint) -> None:
        """Leave and DeleteEndpoint, then Docker's part: the container goes. Idempotent."""
        self.service.leave(ep.network_id, ep.endpoint_id)
        self.service.delete_endpoint(ep.network_id, ep.endpoint_id)
        if ep.container in self.node.containers:
            nsfs.remove(ep.container)
            self.node.containers.remove(ep.container)

    def xfrm(self) -> tuple[list[SecurityAssociation], list[Policy]]:
        return self.ipsec.list_sas(), self.ipsec.list_policies()

    def ip_xfrm(self) -> str:
        """`ip xfrm state` and `ip xfrm policy`: a reader independent of ours."""
        return "".join(nsrun(self.ns, "ip", "xfrm", what).stdout for what in ("state", "policy"))

    def xfrm_stat(self) -> dict[str, int]:
        text = nsrun(self.ns, "cat", "/proc/net/xfrm_stat").stdout
        return {k: int(v) for k, v in (line.split() for line in text.splitlines())}

    def close(self) -> None:
        try:
            self.service.encryption.close()
            self.ipsec.close()
        finally:
            self.node.close()


class HostLab:
    """``count`` hosts on one switch, sharing one store and one control plane."""

    def __init__(self, root: Path, count: int, config: EncryptionConfig) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.switch = root / "switch"
        self.shared = MemoryKV()
        self.hub = Hub()
        self.hosts: list[LabHost] = []
        nsfs.create(self.switch)
        try:
            with ipr_in(self.switch) as ipr:
                ipr.link("set", index=link(ipr, "lo")["index"], state="up")
                ipr.link("add", ifname=SWITCH_BRIDGE, kind="bridge")
                bridge = link(ipr, SWITCH_BRIDGE)["index"]
                ipr.addr("add", index=bridge, address=str(WIRE), prefixlen=24)
                ipr.link("set", index=bridge, state="up")
            for i in range(1, count + 1):
                self.hosts.append(LabHost(root, i, self.switch, self.shared, self.hub, config))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        errors: list[BaseException] = []
        for host in self.hosts:
            try:
                host.close()
            except BaseException as e:
                errors.append(e)
        self.hosts.clear()
        if nsfs.is_netns(self.switch) or self.switch.exists():
            nsfs.remove(self.switch)
        if errors:
            raise errors[0]

    @contextmanager
    def capture(self, workdir: Path, name: str = "underlay") -> Iterator[Capture]:
        """tcpdump on the switch's bridge: every packet between the hosts."""
        with tcpdump(
            ["nsenter", f"--net={self.switch}"],
            SWITCH_BRIDGE,
            workdir / f"{name}.pcap",
            workdir / f"{name}.err",
            timeout=60,
        ) as result:
            yield result
