"""Networks: a namespace holding a bridge and the VXLAN device, made on the host's underlay.

The VXLAN device is created in the host namespace under a staging name and then
moved: its UDP socket stays on the host's underlay while its frames land on the
bridge in the network namespace. Gateways live on that bridge, so two networks
may use the same subnet.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from contextlib import ExitStack, suppress
from dataclasses import replace

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from core.iptypes import IPInterface
from driver import names
from driver.kernel import nsfs
from driver.kernel.netlink.handles import Handles
from driver.kernel.netlink.links import (
    GONE,
    STAGING,
    VETH,
    Handle,
    Msg,
    delete_link,
    delete_quietly,
    errors,
    get_link,
    link_kind,
    must_link,
    set_up,
)
from driver.kernel.netlink.peers import program_peer, read_peers
from driver.kernel.netlink.tuning import bridge_netfilter_off, vxlan_options, vxlan_tuned
from driver.kernel.port import KernelError, NetworkSpec, Peer


class Networks(Handles):
    def network_ids(self) -> set[str]:
        """Includes a namespace file left half-made by a crash, so reconciliation can remove it."""
        try:
            entries = os.listdir(self._netns_dir)
        except FileNotFoundError:
            return set()
        ids = (names.netns_network_prefix(entry) for entry in entries)
        return {i for i in ids if i is not None}

    def ensure_network(self, spec: NetworkSpec) -> None:
        short = names.short(spec.network_id)
        path = self._path(spec.network_id)
        with self._lock(spec.network_id), ExitStack() as undo:
            if not nsfs.is_netns(path):
                self._forget(short)
                # A plain file here is a crash between creating and mounting it.
                with errors(f"network {short}: create namespace {path}"):
                    nsfs.remove(path)
                    nsfs.create(path)
                undo.callback(self._destroy_quietly, spec.network_id)
            with self._netns(spec.network_id) as ns:
                set_up(ns, "lo", f"network {short}: lo")
                bridge = self._ensure_bridge(ns, spec)
                self._bridges[short] = bridge
                self._ensure_vxlan(ns, bridge, spec)
            if spec.tuned:
                with errors(f"network {short}: bridge netfilter off in {path}"):
                    bridge_netfilter_off(path, short)
            undo.pop_all()

    def _ensure_bridge(self, ns: Handle, spec: NetworkSpec) -> int:
        what = f"network {names.short(spec.network_id)}: bridge {names.BRIDGE}"
        with errors(what):
            link = get_link(ns, names.BRIDGE)
            if link is not None and link_kind(link) != "bridge":
                delete_link(ns, link["index"])
                link = None
            if link is None:
                ns.link("add", ifname=names.BRIDGE, kind="bridge", mtu=spec.mtu)
                link = must_link(ns, names.BRIDGE)
            index = int(link["index"])
            if link.get("mtu") != spec.mtu:
                ns.link("set", index=index, mtu=spec.mtu)
            ensure_addresses(ns, index, set(spec.bridge_addresses))
            if not link["flags"] & IFF_UP:
                ns.link("set", index=index, state="up")
            return index

    def _ensure_vxlan(self, ns: Handle, bridge: int, spec: NetworkSpec) -> None:
        short = names.short(spec.network_id)
        what = f"network {short}: {names.VXLAN} (VNI {spec.vni})"
        saved: set[Peer] = set()
        with errors(what):
            link = get_link(ns, names.VXLAN)
            if link is not None and not vxlan_matches(link, spec):
                # VNI, port and local address cannot be changed in place: replace
                # the device, carrying its peers over. The kernel refuses a second
                # device with the same VNI and port, so the old one must go first;
                # if the new one cannot be made, the old one is made again.
                saved = read_peers(ns, int(link["index"]))
                previous = vxlan_spec(link, spec)
                delete_link(ns, int(link["index"]))
                try:
                    self._replace_vxlan(ns, spec)
                except BaseException:
                    if previous is not None:
                        with suppress(KernelError, NetlinkError, OSError):
                            self._replace_vxlan(ns, previous)
                            self._attach_vxlan(ns, bridge, previous, saved)
                    raise
                link = must_link(ns, names.VXLAN)
            if link is None:
                self._replace_vxlan(ns, spec)
                link = must_link(ns, names.VXLAN)
            self._attach_vxlan(ns, bridge, spec, saved, link)

    def _replace_vxlan(self, ns: Handle, spec: NetworkSpec) -> None:
        for stale in ns.link("dump"):
            if STAGING.match(stale.get("ifname") or ""):
                delete_link(ns, int(stale["index"]))
        self._create_vxlan(ns, spec)

    @staticmethod
    def _attach_vxlan(
        ns: Handle, bridge: int, spec: NetworkSpec, saved: set[Peer], link: Msg | None = None
    ) -> None:
        """MTU, bridge, up, and the peers carried over from a replaced device."""
        if link is None:
            link = must_link(ns, names.VXLAN)
        index = int(link["index"])
        if link.get("mtu") != spec.mtu:
            ns.link("set", index=index, mtu=spec.mtu)
        if link.get("master") != bridge:
            ns.link("set", index=index, master=bridge)
        if not link["flags"] & IFF_UP:
            ns.link("set", index=index, state="up")
        for peer in saved:
            program_peer(ns, index, peer)

    def _create_vxlan(self, ns: Handle, spec: NetworkSpec) -> None:
        """Create the device in the host namespace, move it into ``ns``, name it VXLAN."""
        staging = names.vxlan_staging(spec.vni)
        short = names.short(spec.network_id)
        local: dict[str, str] = {}
        if spec.local_vtep is not None:
            key = "vxlan_local" if spec.local_vtep.version == 4 else "vxlan_local6"
            local[key] = str(spec.local_vtep)
        with self._staging_lock, self._host() as host, ExitStack() as undo:
            what = f"network {short}: create {staging} (VNI {spec.vni}) in the host namespace"
            with errors(what):
                stale = get_link(host, staging)
                if stale is not None:
                    delete_link(host, int(stale["index"]))
                try:
                    host.link(
                        "add",
                        ifname=staging,
                        kind="vxlan",
                        vxlan_id=spec.vni,
                        vxlan_port=spec.vxlan_port,
                        vxlan_learning=0,
                        vxlan_proxy=1,
                        vxlan_l2miss=0,
                        vxlan_l3miss=0,
                        mtu=spec.mtu,
                        **local,
                        **vxlan_options(spec.tuned),
                    )
                except NetlinkError as exc:
                    if exc.code == errno.EEXIST:
                        raise KernelError(
                            f"{what}: VNI {spec.vni} on port {spec.vxlan_port} is already "
                            "used by another VXLAN device on this host"
                        ) from exc
                    raise
                index = int(must_link(host, staging)["index"])
            undo.callback(delete_quietly, host, index)
            with errors(f"network {short}: move {staging} into {names.netns(spec.network_id)}"):
                fd = nsfs.open_fd(self._path(spec.network_id))
                try:
                    host.link("set", index=index, net_ns_fd=fd)
                finally:
                    os.close(fd)
            undo.pop_all()
        with errors(f"network {short}: rename {staging} to {names.VXLAN}"):
            moved = get_link(ns, staging)
            if moved is None:
                raise KernelError(f"network {short}: {staging} vanished after the move")
            try:
                ns.link("set", index=moved["index"], ifname=names.VXLAN)
            except BaseException:
                delete_quietly(ns, int(moved["index"]))
                raise

    def remove_network(self, network_id: str) -> None:
        with self._lock(network_id):
            self._destroy(network_id)

    def _destroy_quietly(self, network_id: str) -> None:
        """Undo step: best effort, the original error is the one worth reporting."""
        with suppress(KernelError):
            self._destroy(network_id)

    def _destroy(self, network_id: str) -> None:
        path = self._path(network_id)
        if nsfs.is_netns(path):
            # The namespace is torn down asynchronously once unmounted; delete the
            # devices first so the VNI and the veth names are free when we return.
            with self._netns(network_id) as ns, errors(f"network {names.short(network_id)}"):
                for link in ns.link("dump"):
                    name = link.get("ifname") or ""
                    if name == names.VXLAN or STAGING.match(name) or VETH.match(name):
                        delete_link(ns, int(link["index"]))
        self._forget(names.short(network_id))
        with errors(f"network {names.short(network_id)}: remove namespace {path}"):
            nsfs.remove(path)


def addresses_on(ipr: Handle, index: int) -> set[IPInterface]:
    present: set[IPInterface] = set()
    for msg in ipr.addr("dump", index=index):
        if msg.get("index") != index:
            continue
        iface = ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
        if iface.version == 6 and iface.ip.is_link_local:
            continue  # the kernel's own; not ours to manage
        present.add(iface)
    return present


def ensure_addresses(ipr: Handle, index: int, wanted: set[IPInterface]) -> None:
    present = addresses_on(ipr, index)
    # New addresses first, old ones after: a refused address leaves the bridge as it was.
    added: list[IPInterface] = []
    for iface in sorted(wanted - present, key=str):
        try:
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            added.append(iface)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                for done in added:
                    with suppress(NetlinkError):
                        ipr.addr(
                            "del", index=index, address=str(done.ip),
                            prefixlen=done.network.prefixlen,
                        )
                raise
    for iface in present - wanted:
        try:
            ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code not in (*GONE, errno.EADDRNOTAVAIL):
                raise
    if present - wanted:
        # Deleting a primary IPv4 address takes its secondaries (a new address in the
        # same subnet is one) with it: put back what went.
        for iface in sorted(wanted - addresses_on(ipr, index), key=str):
            try:
                ipr.addr(
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise


def vxlan_matches(link: Msg, spec: NetworkSpec) -> bool:
    if link_kind(link) != "vxlan":
        return False
    data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
    if local in ("0.0.0.0", "::"):
        local = None
    wanted_local = str(spec.local_vtep) if spec.local_vtep is not None else None
    return bool(
        data.get_attr("IFLA_VXLAN_ID") == spec.vni
        and data.get_attr("IFLA_VXLAN_PORT") == spec.vxlan_port
        and local == wanted_local
        and not data.get_attr("IFLA_VXLAN_LEARNING")
        and data.get_attr("IFLA_VXLAN_PROXY")
        and not data.get_attr("IFLA_VXLAN_L2MISS")
        and not data.get_attr("IFLA_VXLAN_L3MISS")
        and vxlan_tuned(data) == spec.tuned
    )


def vxlan_spec(link: Msg, spec: NetworkSpec) -> NetworkSpec | None:
    """The spec an existing VXLAN device was made from, to make it again; None if unreadable."""
    if link_kind(link) != "vxlan":
        return None
    data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
    try:
        return replace(
            spec,
            vni=int(data.get_attr("IFLA_VXLAN_ID")),
            vxlan_port=int(data.get_attr("IFLA_VXLAN_PORT")),
            mtu=int(link.get("mtu") or spec.mtu),
            local_vtep=None if local in (None, "0.0.0.0", "::") else ipaddress.ip_address(local),
            tuned=vxlan_tuned(data),
        )
    except (TypeError, ValueError):
        return None

