"""Endpoints: a veth pair per endpoint, retired on Leave and deleted in batches.

The host side (``names.veth_host``) starts in the host namespace for Docker to
move into the container; the bridge side (``names.veth_bridge``) is created
directly in the network namespace, on the bridge.
"""

from __future__ import annotations

import errno
import os
from contextlib import ExitStack, suppress

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from driver import names
from driver.kernel import nsfs
from driver.kernel.netlink import onelink
from driver.kernel.netlink.handles import Handles
from driver.kernel.netlink.links import (
    BRIDGE_PREFIX,
    GONE,
    RETIRED_GROUP,
    VETH,
    Handle,
    delete_link,
    delete_quietly,
    errors,
    get_link,
    ignore_gone,
    must_link,
)
from driver.kernel.port import EndpointLinks, EndpointSpec, KernelError


class Endpoints(Handles):
    def ensure_endpoint(self, spec: EndpointSpec) -> EndpointLinks:
        links = EndpointLinks(
            host_side=names.veth_host(spec.endpoint_id),
            bridge_side=names.veth_bridge(spec.endpoint_id),
        )
        what = (
            f"network {names.short(spec.network_id)}: endpoint "
            f"{names.short(spec.endpoint_id)} ({links.host_side}/{links.bridge_side})"
        )
        with self._lock(spec.network_id), errors(what):
            if self._create_veth(spec, links):
                return links
            # Something of this endpoint exists already (a retry, or a retired pair
            # the reaper has not deleted yet): look before changing anything.
            with self._netns(spec.network_id) as ns, self._host() as host:
                self._ensure_veth(ns, host, spec, links, what)
        return links

    def _create_veth(self, spec: EndpointSpec, links: EndpointLinks) -> bool:
        """The usual case in one request: the pair, enslaved and up. False on EEXIST.

        The bridge side is the device created (so it can name its master and
        state), the host side its peer, sent into the host namespace.
        """
        short = names.short(spec.network_id)
        with self._netns_socket(spec.network_id) as sock:
            for attempt in (1, 2):
                bridge = self._bridges.get(short)
                if bridge is None:
                    bridge = self._bridges[short] = self._bridge_index(spec.network_id)
                fd = self._host_fd()
                try:
                    onelink.add_veth(
                        sock,
                        links.bridge_side,
                        spec.mtu,
                        bridge,
                        peer_name=links.host_side,
                        peer_mac=spec.mac,
                        peer_netns_fd=fd,
                    )
                    return True
                except NetlinkError as exc:
                    if exc.code == errno.EEXIST:
                        return False
                    if exc.code not in GONE or attempt == 2:
                        raise
                    self._bridges.pop(short, None)  # the bridge was remade: look it up again
                finally:
                    os.close(fd)
        return False  # unreachable: the second attempt returns or raises

    def _bridge_index(self, network_id: str) -> int:
        with self._netns(network_id) as ns:
            link = get_link(ns, names.BRIDGE)
        if link is None:
            short = names.short(network_id)
            raise KernelError(f"network {short}: the network has no {names.BRIDGE}")
        return int(link["index"])

    def _ensure_veth(
        self, ns: Handle, host: Handle, spec: EndpointSpec, links: EndpointLinks, what: str
    ) -> None:
        bridge = get_link(ns, names.BRIDGE)
        if bridge is None:
            raise KernelError(f"{what}: the network has no {names.BRIDGE}")
        inner = get_link(ns, links.bridge_side)
        if inner is not None and inner.get("group") == RETIRED_GROUP:
            # Left, then joined again before the reaper came: start afresh.
            delete_link(ns, int(inner["index"]))
            inner = None
        outer = get_link(host, links.host_side)
        with ExitStack() as undo:
            if inner is None:
                if outer is not None:
                    delete_link(host, int(outer["index"]))
                if not self._create_veth(spec, links):
                    raise KernelError(f"{what}: still exists after it was deleted")
                undo.callback(self._delete_bridge_side_quietly, ns, links.bridge_side)
                inner = must_link(ns, links.bridge_side)
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
            link = get_link(ns, name)
        if link is not None:
            delete_quietly(ns, int(link["index"]))

    def remove_endpoint(self, network_id: str, endpoint_id: str) -> None:
        what = f"network {names.short(network_id)}: endpoint {names.short(endpoint_id)}"
        with self._lock(network_id), errors(what):
            if nsfs.is_netns(self._path(network_id)):
                with self._netns(network_id) as ns:
                    # Deleting one end of a veth deletes the other, wherever it is, so
                    # the host side needs no second handle and lookup.
                    inner = get_link(ns, names.veth_bridge(endpoint_id))
                    if inner is not None and delete_link(ns, int(inner["index"])):
                        return
            self._remove_host_side(endpoint_id)

    def _remove_host_side(self, endpoint_id: str) -> None:
        with self._host() as host:
            outer = get_link(host, names.veth_host(endpoint_id))
            if outer is not None:
                delete_link(host, int(outer["index"]))

    def retire_endpoint(self, network_id: str, endpoint_id: str) -> None:
        what = f"network {names.short(network_id)}: endpoint {names.short(endpoint_id)}"
        with self._lock(network_id), errors(what):
            if nsfs.is_netns(self._path(network_id)):
                with self._netns_socket(network_id) as sock:
                    try:
                        # One request: off the bridge, down, and marked for the reaper.
                        onelink.retire(sock, names.veth_bridge(endpoint_id), RETIRED_GROUP)
                    except NetlinkError as exc:
                        if exc.code not in GONE:
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
                errors(f"network {names.short(network_id)}: delete retired veths"),
                nsfs.socket_in(path) as sock,
            ):
                ignore_gone(lambda: onelink.delete_group(sock, RETIRED_GROUP))
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
            errors(f"network {names.short(network_id)}: list endpoints"),
        ):
            found = set()
            retired = False
            for link in ns.link("dump"):
                match = VETH.match(link.get("ifname") or "")
                if not match or match.group(1) != BRIDGE_PREFIX:
                    continue
                if link.get("group") == RETIRED_GROUP:
                    retired = True  # left behind by an earlier run: reap it now
                else:
                    found.add(match.group(2))
            if retired:
                self._reaper.schedule(network_id)
            return found

