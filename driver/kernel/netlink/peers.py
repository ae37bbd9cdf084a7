"""Remote peers on a network's VXLAN device: a static FDB entry and a permanent neighbour each."""

from __future__ import annotations

import ipaddress
import socket

from core.iptypes import IPAddress
from driver import names
from driver.kernel import nsfs
from driver.kernel.netlink.handles import Handles
from driver.kernel.netlink.links import (
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    Handle,
    errors,
    get_link,
    ignore_gone,
)
from driver.kernel.port import KernelError, Peer


class Peers(Handles):
    def ensure_peer(self, network_id: str, peer: Peer) -> None:
        what = f"network {names.short(network_id)}: peer {peer.ip} {peer.mac} via {peer.vtep}"
        with self._lock(network_id), self._netns(network_id) as ns, errors(what):
            vxlan = get_link(ns, names.VXLAN)
            if vxlan is None:
                raise KernelError(f"{what}: the network has no {names.VXLAN}")
            program_peer(ns, int(vxlan["index"]), peer)

    def remove_peer(self, network_id: str, peer: Peer) -> None:
        if not nsfs.is_netns(self._path(network_id)):
            return
        what = f"network {names.short(network_id)}: remove peer {peer.ip} {peer.mac}"
        with self._lock(network_id), self._netns(network_id) as ns, errors(what):
            vxlan = get_link(ns, names.VXLAN)
            if vxlan is None:
                return
            index = int(vxlan["index"])
            # Only this exact peer: if the MAC has since moved to another VTEP,
            # this is stale news and the newer entries stay.
            remotes = fdb_remotes(ns, index).get(peer.mac)
            ours = remotes is not None and str(peer.vtep) in remotes
            neighbours = read_neighbours(ns, index)
            if neighbours.get(peer.ip) == peer.mac and (ours or remotes is None):
                ignore_gone(lambda: ns.neigh("del", ifindex=index, dst=str(peer.ip)))
                del neighbours[peer.ip]
            # The FDB entry goes with the last IP that uses the MAC (dual stack).
            if ours and peer.mac not in neighbours.values():
                ignore_gone(
                    lambda: ns.fdb(
                        "del",
                        ifindex=index,
                        lladdr=peer.mac,
                        dst=str(peer.vtep),
                        state=NUD_PERMANENT | NUD_NOARP,
                        flags=NTF_SELF,
                    )
                )

    def peers(self, network_id: str) -> set[Peer]:
        if not nsfs.is_netns(self._path(network_id)):
            return set()
        what = f"network {names.short(network_id)}: list peers"
        with self._lock(network_id), self._netns(network_id) as ns, errors(what):
            vxlan = get_link(ns, names.VXLAN)
            return set() if vxlan is None else read_peers(ns, int(vxlan["index"]))


def program_peer(ipr: Handle, vxlan: int, peer: Peer) -> None:
    # NLM_F_REPLACE: a MAC that moved to another VTEP, or an IP that now has
    # another MAC, is overwritten instead of failing with EEXIST.
    ipr.fdb(
        "replace",
        ifindex=vxlan,
        lladdr=peer.mac,
        dst=str(peer.vtep),
        state=NUD_PERMANENT | NUD_NOARP,
        flags=NTF_SELF,
    )
    ipr.neigh(
        "replace",
        ifindex=vxlan,
        dst=str(peer.ip),
        lladdr=peer.mac,
        state=NUD_PERMANENT,
    )


def fdb_remotes(ipr: Handle, vxlan: int) -> dict[str, set[str]]:
    remotes: dict[str, set[str]] = {}
    for entry in ipr.fdb("dump", ifindex=vxlan):
        dst = entry.get("dst")
        if entry.get("ifindex") == vxlan and dst and entry.get("flags", 0) & NTF_SELF:
            remotes.setdefault(str(entry.get("lladdr")).lower(), set()).add(str(dst))
    return remotes


def read_neighbours(ipr: Handle, vxlan: int) -> dict[IPAddress, str]:
    found: dict[IPAddress, str] = {}
    for entry in ipr.neigh("dump", ifindex=vxlan):
        if (
            entry.get("ifindex") == vxlan
            and entry.get("family") in (socket.AF_INET, socket.AF_INET6)
            and entry.get("state", 0) & NUD_PERMANENT
            and entry.get("lladdr")
        ):
            found[ipaddress.ip_address(entry.get("dst"))] = str(entry.get("lladdr")).lower()
    return found


def read_peers(ipr: Handle, vxlan: int) -> set[Peer]:
    """Peers are the join of the neighbour table (IP -> MAC) and the FDB (MAC -> VTEP)."""
    remotes = fdb_remotes(ipr, vxlan)
    return {
        Peer(ip=ip, mac=mac, vtep=ipaddress.ip_address(vtep))
        for ip, mac in read_neighbours(ipr, vxlan).items()
        for vtep in remotes.get(mac, ())
    }

