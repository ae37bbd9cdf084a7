"""The Kernel port over netlink (pyroute2), laid out as Docker's overlay driver does it.

Per network, a named network namespace ``names.netns(id)`` under ``netns_dir``
holds a bridge ``names.BRIDGE`` and the VXLAN device ``names.VXLAN``. The VXLAN
device is created in the host namespace under a staging name and then moved:
its UDP socket stays on the host's underlay while its frames land on the bridge
in the network namespace. Gateways live on that bridge, so two networks may use
the same subnet.

Per endpoint, a veth pair: the host side (``names.veth_host``) in the host
namespace for Docker to move into the container, the bridge side
(``names.veth_bridge``) created directly in the network namespace.

Every netlink handle is opened and closed per call: a pyroute2 0.9 handle keeps
an event loop per thread, so one shared by request threads breaks. Calls on one
network are serialised by a per-network lock; creating and deleting staging
devices in the host namespace is serialised by one more lock. The bridge's
ifindex is cached per network, so the usual Join is a single request.

Deleting a veth pair costs the kernel 15-20 ms (it waits for an RCU grace
period), most of it outside RTNL. Leave does not wait for that: it retires the
pair (down, off the bridge, into ``RETIRED_GROUP``), and a reaper thread deletes
every retired device of a namespace in one request, so one grace period covers
a whole batch.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from core.iptypes import IPAddress, IPInterface, IPNetwork
from driver import names
from driver.kernel import nsfs
from driver.kernel.port import EndpointLinks, EndpointSpec, KernelError, NetworkSpec, Peer
from driver.keylocks import KeyedLocks

DEFAULT_NETNS_DIR = Path("/run/swarmnet/netns")
DEFAULT_MTU = 1500

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
MAIN_TABLE = 254
_GONE = (errno.ENOENT, errno.ENODEV)
# The link group of retired veths (ASCII "sn"). Our namespaces hold only our devices.
RETIRED_GROUP = 0x736E
REAP_DELAY = 0.02  # seconds the reaper waits for more retirements to batch

_HOST_PREFIX = names.veth_host("")
_BRIDGE_PREFIX = names.veth_bridge("")
_STAGING_PREFIX = names.vxlan_staging(0)[:-1]
_VETH = re.compile(rf"^({re.escape(_HOST_PREFIX)}|{re.escape(_BRIDGE_PREFIX)})([0-9a-f]{{12}})$")
_STAGING = re.compile(rf"^{re.escape(_STAGING_PREFIX)}[0-9]+$")

log = logging.getLogger(__name__)

Handle = Any  # a pyroute2 IPRoute; pyroute2 ships no type information
Msg = Any  # a pyroute2 netlink message


class NetlinkKernel:
    """The real kernel. ``host_netns`` names the host namespace (tests); None = the caller's."""

    def __init__(self, netns_dir: Path = DEFAULT_NETNS_DIR, host_netns: Path | None = None) -> None:
        self._netns_dir = netns_dir
        self._host_netns = host_netns
        self._locks = KeyedLocks()
        self._staging_lock = threading.Lock()
        # Per network (short ID), used and changed only under that network's lock.
        self._bridges: dict[str, int] = {}  # the bridge's ifindex in the namespace
        self._reaper = _Reaper(self._reap)

    # -- handles and locks -------------------------------------------------

    def _lock(self, network_id: str) -> AbstractContextManager[None]:
        return self._locks.hold(names.short(network_id))

    def _path(self, network_id: str) -> Path:
        return self._netns_dir / names.netns(network_id)

    @contextmanager
    def _host(self) -> Iterator[Handle]:
        with _errors("open a netlink socket in the host namespace"):
            if self._host_netns is None:
                ipr = IPRoute(groups=0)
            else:
                ipr = _ipr_on(nsfs.socket_in(self._host_netns))
        with ipr:
            yield ipr

    @contextmanager
    def _netns(self, network_id: str) -> Iterator[Handle]:
        path = self._path(network_id)
        if not nsfs.is_netns(path):
            self._forget(names.short(network_id))
            raise KernelError(f"network {names.short(network_id)}: namespace {path} does not exist")
        with _errors(f"open namespace {path}"):
            ipr = _ipr_on(nsfs.socket_in(path))
        with ipr:
            yield ipr

    def _forget(self, short: str) -> None:
        """Drop what is cached about a network. The caller holds its lock."""
        self._bridges.pop(short, None)

    def _host_fd(self) -> int:
        # The calling thread's namespace, as an IPRoute opened here would be in.
        return nsfs.open_fd(self._host_netns or Path("/proc/thread-self/ns/net"))

    # -- host facts --------------------------------------------------------

    def underlay_mtu(self, local_addr: IPAddress | None) -> int:
        with self._host() as host, _errors("read the underlay MTU"):
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
                else [_family(local_addr), socket.AF_INET, socket.AF_INET6]
            )
            for family in families:
                if index is not None:
                    break
                index = _default_route_oif(host, family)
            if index is None:
                return DEFAULT_MTU
            link = _get_link_by_index(host, index)
            return int(link.get("mtu")) if link is not None else DEFAULT_MTU

    def host_networks(self) -> list[IPNetwork]:
        """Main-table route destinations and on-link networks of addresses.

        Left out: default routes, IPv6 link-local (fe80::/10) and multicast. Kept:
        loopback (127.0.0.0/8, ::1/128) and host routes; an IPAM never wants those.
        """
        found: set[IPNetwork] = set()
        with self._host() as host, _errors("read host routes and addresses"):
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

    # -- networks ----------------------------------------------------------

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
                with _errors(f"network {short}: create namespace {path}"):
                    nsfs.remove(path)
                    nsfs.create(path)
                undo.callback(self._destroy_quietly, spec.network_id)
            with self._netns(spec.network_id) as ns:
                _set_up(ns, "lo", f"network {short}: lo")
                bridge = self._ensure_bridge(ns, spec)
                self._bridges[short] = bridge
                self._ensure_vxlan(ns, bridge, spec)
            undo.pop_all()

    def _ensure_bridge(self, ns: Handle, spec: NetworkSpec) -> int:
        what = f"network {names.short(spec.network_id)}: bridge {names.BRIDGE}"
        with _errors(what):
            link = _get_link(ns, names.BRIDGE)
            if link is not None and _kind(link) != "bridge":
                _delete_link(ns, link["index"])
                link = None
            if link is None:
                ns.link("add", ifname=names.BRIDGE, kind="bridge", mtu=spec.mtu)
                link = _must_link(ns, names.BRIDGE)
            index = int(link["index"])
            if link.get("mtu") != spec.mtu:
                ns.link("set", index=index, mtu=spec.mtu)
            _ensure_addresses(ns, index, set(spec.bridge_addresses))
            if not link["flags"] & IFF_UP:
                ns.link("set", index=index, state="up")
            return index

    def _ensure_vxlan(self, ns: Handle, bridge: int, spec: NetworkSpec) -> None:
        short = names.short(spec.network_id)
        what = f"network {short}: {names.VXLAN} (VNI {spec.vni})"
        saved: set[Peer] = set()
        with _errors(what):
            link = _get_link(ns, names.VXLAN)
            if link is not None and not _vxlan_matches(link, spec):
                # VNI, port and local address cannot be changed in place: replace
                # the device, carrying its peers over. The kernel refuses a second
                # device with the same VNI and port, so the old one must go first;
                # if the new one cannot be made, the old one is made again.
                saved = _read_peers(ns, int(link["index"]))
                previous = _vxlan_spec(link, spec)
                _delete_link(ns, int(link["index"]))
                try:
                    self._replace_vxlan(ns, spec)
                except BaseException:
                    if previous is not None:
                        with suppress(KernelError, NetlinkError, OSError):
                            self._replace_vxlan(ns, previous)
                            self._attach_vxlan(ns, bridge, previous, saved)
                    raise
                link = _must_link(ns, names.VXLAN)
            if link is None:
                self._replace_vxlan(ns, spec)
                link = _must_link(ns, names.VXLAN)
            self._attach_vxlan(ns, bridge, spec, saved, link)

    def _replace_vxlan(self, ns: Handle, spec: NetworkSpec) -> None:
        for stale in ns.link("dump"):
            if _STAGING.match(stale.get("ifname") or ""):
                _delete_link(ns, int(stale["index"]))
        self._create_vxlan(ns, spec)

    @staticmethod
    def _attach_vxlan(
        ns: Handle, bridge: int, spec: NetworkSpec, saved: set[Peer], link: Msg | None = None
    ) -> None:
        """MTU, bridge, up, and the peers carried over from a replaced device."""
        if link is None:
            link = _must_link(ns, names.VXLAN)
        index = int(link["index"])
        if link.get("mtu") != spec.mtu:
            ns.link("set", index=index, mtu=spec.mtu)
        if link.get("master") != bridge:
            ns.link("set", index=index, master=bridge)
        if not link["flags"] & IFF_UP:
            ns.link("set", index=index, state="up")
        for peer in saved:
            _program_peer(ns, index, peer)

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
            with _errors(what):
                stale = _get_link(host, staging)
                if stale is not None:
                    _delete_link(host, int(stale["index"]))
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
                    )
                except NetlinkError as exc:
                    if exc.code == errno.EEXIST:
                        raise KernelError(
                            f"{what}: VNI {spec.vni} on port {spec.vxlan_port} is already "
                            "used by another VXLAN device on this host"
                        ) from exc
                    raise
                index = int(_must_link(host, staging)["index"])
            undo.callback(_delete_quietly, host, index)
            with _errors(f"network {short}: move {staging} into {names.netns(spec.network_id)}"):
                fd = nsfs.open_fd(self._path(spec.network_id))
                try:
                    host.link("set", index=index, net_ns_fd=fd)
                finally:
                    os.close(fd)
            undo.pop_all()
        with _errors(f"network {short}: rename {staging} to {names.VXLAN}"):
            moved = _get_link(ns, staging)
            if moved is None:
                raise KernelError(f"network {short}: {staging} vanished after the move")
            try:
                ns.link("set", index=moved["index"], ifname=names.VXLAN)
            except BaseException:
                _delete_quietly(ns, int(moved["index"]))
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
            with self._netns(network_id) as ns, _errors(f"network {names.short(network_id)}"):
                for link in ns.link("dump"):
                    name = link.get("ifname") or ""
                    if name == names.VXLAN or _STAGING.match(name) or _VETH.match(name):
                        _delete_link(ns, int(link["index"]))
        self._forget(names.short(network_id))
        with _errors(f"network {names.short(network_id)}: remove namespace {path}"):
            nsfs.remove(path)

    # -- endpoints ---------------------------------------------------------

    def ensure_endpoint(self, spec: EndpointSpec) -> EndpointLinks:
        links = EndpointLinks(
            host_side=names.veth_host(spec.endpoint_id),
            bridge_side=names.veth_bridge(spec.endpoint_id),
        )
        what = (
            f"network {names.short(spec.network_id)}: endpoint "
            f"{names.short(spec.endpoint_id)} ({links.host_side}/{links.bridge_side})"
        )
        with self._lock(spec.network_id), self._netns(spec.network_id) as ns, _errors(what):
            if self._create_veth(ns, spec, links):
                return links
            # Something of this endpoint exists already (a retry, or a retired pair
            # the reaper has not deleted yet): look before changing anything.
            with self._host() as host:
                self._ensure_veth(ns, host, spec, links, what)
        return links

    def _create_veth(self, ns: Handle, spec: EndpointSpec, links: EndpointLinks) -> bool:
        """The usual case in one request: the pair, enslaved and up. False on EEXIST.

        The bridge side is the device created (so it can name its master and
        state), the host side its peer, sent into the host namespace.
        """
        short = names.short(spec.network_id)
        for attempt in (1, 2):
            bridge = self._bridges.get(short)
            if bridge is None:
                link = _get_link(ns, names.BRIDGE)
                if link is None:
                    raise KernelError(f"network {short}: the network has no {names.BRIDGE}")
                bridge = self._bridges[short] = int(link["index"])
            fd = self._host_fd()
            try:
                ns.link(
                    "add",
                    ifname=links.bridge_side,
                    kind="veth",
                    mtu=spec.mtu,
                    master=bridge,
                    state="up",
                    peer={
                        "ifname": links.host_side,
                        "address": spec.mac,
                        "mtu": spec.mtu,
                        "net_ns_fd": fd,
                    },
                )
                return True
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    return False
                if exc.code not in _GONE or attempt == 2:
                    raise
                self._bridges.pop(short, None)  # the bridge was remade: look it up again
            finally:
                os.close(fd)
        return False  # unreachable: the second attempt returns or raises

    def _ensure_veth(
        self, ns: Handle, host: Handle, spec: EndpointSpec, links: EndpointLinks, what: str
    ) -> None:
        bridge = _get_link(ns, names.BRIDGE)
        if bridge is None:
            raise KernelError(f"{what}: the network has no {names.BRIDGE}")
        inner = _get_link(ns, links.bridge_side)
        if inner is not None and inner.get("group") == RETIRED_GROUP:
            # Left, then joined again before the reaper came: start afresh.
            _delete_link(ns, int(inner["index"]))
            inner = None
        outer = _get_link(host, links.host_side)
        with ExitStack() as undo:
            if inner is None:
                if outer is not None:
                    _delete_link(host, int(outer["index"]))
                if not self._create_veth(ns, spec, links):
                    raise KernelError(f"{what}: still exists after it was deleted")
                undo.callback(self._delete_bridge_side_quietly, ns, links.bridge_side)
                inner = _must_link(ns, links.bridge_side)
            elif outer is not None:
                # Not joined yet: the host side is still ours to correct.
                if outer.get("mtu") != spec.mtu:
                    host.link("set", index=outer["index"], mtu=spec.mtu)
                if outer.get("address") != spec.mac:
                    host.link("set", index=outer["index"], address=spec.mac)
            index = int(inner["index"])
            if inner.get("mtu") != spec.mtu:
                ns.link("set", index=index, mtu=spec.mtu)
            if inner.get("master") != bridge["index"]:
                ns.link("set", index=index, master=bridge["index"])
            if not inner["flags"] & IFF_UP:
                ns.link("set", index=index, state="up")
            undo.pop_all()

    @staticmethod
    def _delete_bridge_side_quietly(ns: Handle, name: str) -> None:
        link = None
        with suppress(NetlinkError, OSError):
            link = _get_link(ns, name)
        if link is not None:
            _delete_quietly(ns, int(link["index"]))

    def remove_endpoint(self, network_id: str, endpoint_id: str) -> None:
        what = f"network {names.short(network_id)}: endpoint {names.short(endpoint_id)}"
        with self._lock(network_id), _errors(what):
            if nsfs.is_netns(self._path(network_id)):
                with self._netns(network_id) as ns:
                    # Deleting one end of a veth deletes the other, wherever it is, so
                    # the host side needs no second handle and lookup.
                    inner = _get_link(ns, names.veth_bridge(endpoint_id))
                    if inner is not None and _delete_link(ns, int(inner["index"])):
                        return
            self._remove_host_side(endpoint_id)

    def _remove_host_side(self, endpoint_id: str) -> None:
        with self._host() as host:
            outer = _get_link(host, names.veth_host(endpoint_id))
            if outer is not None:
                _delete_link(host, int(outer["index"]))

    def retire_endpoint(self, network_id: str, endpoint_id: str) -> None:
        what = f"network {names.short(network_id)}: endpoint {names.short(endpoint_id)}"
        with self._lock(network_id), _errors(what):
            if nsfs.is_netns(self._path(network_id)):
                with self._netns(network_id) as ns:
                    try:
                        # One request: off the bridge, down, and marked for the reaper.
                        ns.link(
                            "set",
                            ifname=names.veth_bridge(endpoint_id),
                            master=0,
                            state="down",
                            group=RETIRED_GROUP,
                        )
                    except NetlinkError as exc:
                        if exc.code not in _GONE:
                            raise
                    else:
                        self._reaper.schedule(network_id)
                        return
            # No bridge side (half made, or the network is gone): nothing to batch.
            self._remove_host_side(endpoint_id)

    def _reap(self, network_id: str) -> None:
        """Delete every retired device of the network in one request.

        Runs on the reaper's thread with a handle of its own and without the
        network's lock: the deletion waits for the kernel, and Joins need not.
        """
        path = self._path(network_id)
        if not nsfs.is_netns(path):
            return
        try:
            with (
                _errors(f"network {names.short(network_id)}: delete retired veths"),
                _ipr_on(nsfs.socket_in(path)) as ns,
            ):
                _ignore_gone(lambda: ns.link("del", group=RETIRED_GROUP))
        except KernelError:
            if not nsfs.is_netns(path):
                return  # DeleteNetwork came first: the devices went with the namespace
            raise

    def settle(self) -> None:
        """Wait until every retired device is deleted (tests, shutdown)."""
        self._reaper.drain()

    def endpoint_ids(self, network_id: str) -> set[str]:
        """Retired pairs are left out: they are gone as far as anyone should care."""
        if not nsfs.is_netns(self._path(network_id)):
            return set()
        with (
            self._lock(network_id),
            self._netns(network_id) as ns,
            _errors(f"network {names.short(network_id)}: list endpoints"),
        ):
            found = set()
            retired = False
            for link in ns.link("dump"):
                match = _VETH.match(link.get("ifname") or "")
                if not match or match.group(1) != _BRIDGE_PREFIX:
                    continue
                if link.get("group") == RETIRED_GROUP:
                    retired = True  # left behind by an earlier run: reap it now
                else:
                    found.add(match.group(2))
            if retired:
                self._reaper.schedule(network_id)
            return found

    # -- peers -------------------------------------------------------------

    def ensure_peer(self, network_id: str, peer: Peer) -> None:
        what = f"network {names.short(network_id)}: peer {peer.ip} {peer.mac} via {peer.vtep}"
        with self._lock(network_id), self._netns(network_id) as ns, _errors(what):
            vxlan = _get_link(ns, names.VXLAN)
            if vxlan is None:
                raise KernelError(f"{what}: the network has no {names.VXLAN}")
            _program_peer(ns, int(vxlan["index"]), peer)

    def remove_peer(self, network_id: str, peer: Peer) -> None:
        if not nsfs.is_netns(self._path(network_id)):
            return
        what = f"network {names.short(network_id)}: remove peer {peer.ip} {peer.mac}"
        with self._lock(network_id), self._netns(network_id) as ns, _errors(what):
            vxlan = _get_link(ns, names.VXLAN)
            if vxlan is None:
                return
            index = int(vxlan["index"])
            # Only this exact peer: if the MAC has since moved to another VTEP,
            # this is stale news and the newer entries stay.
            remotes = _fdb_remotes(ns, index).get(peer.mac)
            ours = remotes is not None and str(peer.vtep) in remotes
            neighbours = _neighbours(ns, index)
            if neighbours.get(peer.ip) == peer.mac and (ours or remotes is None):
                _ignore_gone(lambda: ns.neigh("del", ifindex=index, dst=str(peer.ip)))
                del neighbours[peer.ip]
            # The FDB entry goes with the last IP that uses the MAC (dual stack).
            if ours and peer.mac not in neighbours.values():
                _ignore_gone(
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
        with self._lock(network_id), self._netns(network_id) as ns, _errors(what):
            vxlan = _get_link(ns, names.VXLAN)
            return set() if vxlan is None else _read_peers(ns, int(vxlan["index"]))

    # -- reconciliation ----------------------------------------------------

    def remove_orphan_links(self, keep_endpoint_ids: set[str]) -> list[str]:
        """Veth ends of unknown endpoints and staging VXLAN devices in the host namespace.

        Deleting a host-side veth also deletes its bridge side in the network
        namespace. Names of ours that match neither pattern are left alone.
        Meant for start-up reconciliation: an endpoint created concurrently and
        missing from ``keep`` would be taken for an orphan.
        """
        keep = {names.short(e) for e in keep_endpoint_ids}
        deleted: list[str] = []
        with self._staging_lock, self._host() as host, _errors("remove orphan links"):
            for link in host.link("dump"):
                name = link.get("ifname") or ""
                if not names.is_ours(name):
                    continue
                veth = _VETH.match(name)
                orphan = (veth and veth.group(2) not in keep) or _STAGING.match(name)
                if orphan and _delete_link(host, int(link["index"])):
                    deleted.append(name)
        return sorted(deleted)


# -- helpers ---------------------------------------------------------------


class _Reaper:
    """A thread that runs ``reap(network_id)`` for networks with retired devices.

    Retirements that come within ``REAP_DELAY`` of each other share one call.
    """

    def __init__(self, reap: Callable[[str], None]) -> None:
        self._reap = reap
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._busy = False
        self._thread: threading.Thread | None = None

    def schedule(self, network_id: str) -> None:
        with self._cond:
            self._pending.add(network_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="swarmnet-reaper", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def drain(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                self._busy = True
            time.sleep(REAP_DELAY)
            with self._cond:
                batch, self._pending = self._pending, set()
            for network_id in sorted(batch):
                try:
                    self._reap(network_id)
                except Exception:
                    log.exception(
                        "network %s: deleting retired veths failed; the next start "
                        "or retirement tries again",
                        names.short(network_id),
                    )
            with self._cond:
                self._busy = bool(self._pending)
                self._cond.notify_all()


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn netlink and OS errors into KernelError naming the object."""
    try:
        yield
    except KernelError:
        raise
    except NetlinkError as exc:
        raise KernelError(f"{what}: {os.strerror(exc.code)} (errno {exc.code})") from exc
    except OSError as exc:
        code = exc.errno or 0
        raise KernelError(f"{what}: {os.strerror(code) if code else exc}") from exc


def _ipr_on(sock: socket.socket) -> Handle:
    fd = sock.detach()
    try:
        return IPRoute(fileno=fd, groups=0)
    except BaseException:
        os.close(fd)
        raise


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _kind(link: Msg) -> str | None:
    kind = link.get(("linkinfo", "kind"))
    return str(kind) if kind is not None else None


def _get_link(ipr: Handle, name: str) -> Msg | None:
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code in _GONE:
            return None
        raise


def _must_link(ipr: Handle, name: str) -> Msg:
    """A link we have just created or moved; its absence is a kernel surprise worth reporting."""
    link = _get_link(ipr, name)
    if link is None:
        raise KernelError(f"{name} is missing right after it was created")
    return link


def _get_link_by_index(ipr: Handle, index: int) -> Msg | None:
    try:
        return ipr.link("get", index=index)[0]
    except NetlinkError as exc:
        if exc.code in _GONE:
            return None
        raise


def _delete_link(ipr: Handle, index: int) -> bool:
    """Delete a link; False if it was already gone."""
    try:
        ipr.link("del", index=index)
        return True
    except NetlinkError as exc:
        if exc.code in _GONE:
            return False
        raise


def _delete_quietly(ipr: Handle, index: int) -> None:
    """Undo step: best effort, the original error is the one worth reporting."""
    with suppress(NetlinkError, OSError):
        _delete_link(ipr, index)


def _ignore_gone(fn: Callable[[], object]) -> None:
    try:
        fn()
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise


def _set_up(ipr: Handle, name: str, what: str) -> None:
    with _errors(what):
        link = _get_link(ipr, name)
        if link is None:
            raise KernelError(f"{what}: missing")
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=link["index"], state="up")


def _default_route_oif(ipr: Handle, family: int) -> int | None:
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


def _addresses_on(ipr: Handle, index: int) -> set[IPInterface]:
    present: set[IPInterface] = set()
    for msg in ipr.addr("dump", index=index):
        if msg.get("index") != index:
            continue
        iface = ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
        if iface.version == 6 and iface.ip.is_link_local:
            continue  # the kernel's own; not ours to manage
        present.add(iface)
    return present


def _ensure_addresses(ipr: Handle, index: int, wanted: set[IPInterface]) -> None:
    present = _addresses_on(ipr, index)
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
            if exc.code not in (*_GONE, errno.EADDRNOTAVAIL):
                raise
    if present - wanted:
        # Deleting a primary IPv4 address takes its secondaries (a new address in the
        # same subnet is one) with it: put back what went.
        for iface in sorted(wanted - _addresses_on(ipr, index), key=str):
            try:
                ipr.addr(
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise


def _vxlan_matches(link: Msg, spec: NetworkSpec) -> bool:
    if _kind(link) != "vxlan":
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
    )


def _vxlan_spec(link: Msg, spec: NetworkSpec) -> NetworkSpec | None:
    """The spec an existing VXLAN device was made from, to make it again; None if unreadable."""
    if _kind(link) != "vxlan":
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
        )
    except (TypeError, ValueError):
        return None


def _program_peer(ipr: Handle, vxlan: int, peer: Peer) -> None:
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


def _fdb_remotes(ipr: Handle, vxlan: int) -> dict[str, set[str]]:
    remotes: dict[str, set[str]] = {}
    for entry in ipr.fdb("dump", ifindex=vxlan):
        dst = entry.get("dst")
        if entry.get("ifindex") == vxlan and dst and entry.get("flags", 0) & NTF_SELF:
            remotes.setdefault(str(entry.get("lladdr")).lower(), set()).add(str(dst))
    return remotes


def _neighbours(ipr: Handle, vxlan: int) -> dict[IPAddress, str]:
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


def _read_peers(ipr: Handle, vxlan: int) -> set[Peer]:
    """Peers are the join of the neighbour table (IP -> MAC) and the FDB (MAC -> VTEP)."""
    remotes = _fdb_remotes(ipr, vxlan)
    return {
        Peer(ip=ip, mac=mac, vtep=ipaddress.ip_address(vtep))
        for ip, mac in _neighbours(ipr, vxlan).items()
        for vtep in remotes.get(mac, ())
    }
