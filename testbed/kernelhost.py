"""A namespace playing the host, with a NetlinkKernel that lives in it.

A ``NetlinkHost`` is a fresh namespace standing in for the host, its own
directory for network namespaces, and a ``NetlinkKernel`` pointed at both, so
the machine's real host namespace is never touched. ``close()`` unmounts every
namespace it made: their links go with them, even when a test failed half-way.
Used by the kernel suites and, several on one switch, by :mod:`testbed.hostlab`.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from core.iptypes import IPInterface
from driver import names
from driver.kernel import nsfs
from driver.kernel.netlink import NetlinkKernel
from testbed.mounts import mounts_under
from testbed.netns import ipr_in, link

UNDERLAY_IF = "ul0"
# With a gateway, the underlay carries the default route plus this one more routed network.
ROUTED = ipaddress.ip_network("203.0.113.0/24")


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
        left = mounts_under(self.root.resolve())
        assert not left, f"namespaces still mounted after cleanup: {left}"
