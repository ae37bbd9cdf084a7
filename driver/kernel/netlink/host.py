"""Host facts (underlay MTU, networks in use) and start-up cleaning of the host namespace."""

from __future__ import annotations

import ipaddress
import socket

from core.iptypes import IPAddress, IPNetwork
from driver import names
from driver.kernel.netlink.handles import Handles
from driver.kernel.netlink.links import (
    MAIN_TABLE,
    STAGING,
    VETH,
    Handle,
    delete_link,
    errors,
    family_of,
    get_link_by_index,
)

DEFAULT_MTU = 1500


class HostFacts(Handles):
    def underlay_mtu(self, local_addr: IPAddress | None) -> int:
        with self._host() as host, errors("read the underlay MTU"):
            index = None
            if local_addr is not None:
                wanted = str(local_addr)
                for msg in host.addr("dump"):
                    if wanted in (msg.get("local"), msg.get("address")):
                        index = msg["index"]
                        break
            families = (
                [socket.AF_INET, socket.AF_INET6]
                if local_addr is None
                else [family_of(local_addr), socket.AF_INET, socket.AF_INET6]
            )
            for family in families:
                if index is not None:
                    break
                index = default_route_oif(host, family)
            if index is None:
                return DEFAULT_MTU
            link = get_link_by_index(host, index)
            return int(link.get("mtu")) if link is not None else DEFAULT_MTU

    def host_networks(self) -> list[IPNetwork]:
        """Main-table route destinations and on-link networks of addresses.

        Left out: default routes, IPv6 link-local (fe80::/10) and multicast. Kept:
        loopback (127.0.0.0/8, ::1/128) and host routes; an IPAM never wants those.
        """
        found: set[IPNetwork] = set()
        with self._host() as host, errors("read host routes and addresses"):
            for route in host.route("dump", table=MAIN_TABLE):
                if route.get("table") != MAIN_TABLE or not route.get("dst_len"):
                    continue
                dst = route.get("dst")
                if dst:
                    found.add(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
            for addr in host.addr("dump"):
                address = addr.get("address")
                if address:
                    iface = ipaddress.ip_interface(f"{address}/{addr['prefixlen']}")
                    found.add(iface.network)
        kept = [n for n in found if not (n.is_link_local and n.version == 6) and not n.is_multicast]
        return sorted(kept, key=lambda n: (n.version, n.network_address, n.prefixlen))

    def remove_orphan_links(self, keep_endpoint_ids: set[str]) -> list[str]:
        """Veth ends of unknown endpoints and staging VXLAN devices in the host namespace.

        Deleting a host-side veth also deletes its bridge side in the network
        namespace. Names of ours that match neither pattern are left alone.
        Meant for start-up reconciliation: an endpoint created concurrently and
        missing from ``keep`` would be taken for an orphan.
        """
        keep = {names.short(e) for e in keep_endpoint_ids}
        deleted: list[str] = []
        with self._staging_lock, self._host() as host, errors("remove orphan links"):
            for link in host.link("dump"):
                name = link.get("ifname") or ""
                if not names.is_ours(name):
                    continue
                veth = VETH.match(name)
                orphan = (veth and veth.group(2) not in keep) or STAGING.match(name)
                if orphan and delete_link(host, int(link["index"])):
                    deleted.append(name)
        return sorted(deleted)


def default_route_oif(ipr: Handle, family: int) -> int | None:
    for route in ipr.route("dump", table=MAIN_TABLE, family=family):
        if route.get("dst_len") or route.get("table") != MAIN_TABLE:
            continue
        oif = route.get("oif")
        if oif:
            return int(oif)
        for hop in route.get("multipath") or ():
            if hop.get("oif"):
                return int(hop["oif"])
    return None

