"""An in-memory Kernel for unit tests.

It keeps the same state the netlink kernel would and fails where the real one
fails (for example, an endpoint on a network that does not exist). The behaviour
suite in ``tests/kernel`` runs against both to keep it honest.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field

from core.iptypes import IPAddress, IPNetwork
from driver import names
from driver.kernel.port import EndpointLinks, EndpointSpec, KernelError, NetworkSpec, Peer


@dataclass
class FakeNetwork:
    spec: NetworkSpec
    endpoints: dict[str, EndpointSpec] = field(default_factory=dict)  # short eid -> spec
    # The VXLAN device's two tables, as the kernel keeps them: neighbours
    # (IP -> MAC) and the FDB (MAC -> VTEP). A dual-stack endpoint has two
    # neighbours sharing one FDB entry.
    neighbours: dict[IPAddress, str] = field(default_factory=dict)
    fdb: dict[str, IPAddress] = field(default_factory=dict)
    # How many neighbours use each MAC: finding whether one still does must not scan the
    # table (the real kernel does not, and bench/scale_sim holds thousands of peers).
    mac_uses: dict[str, int] = field(default_factory=dict)

    def set_neighbour(self, ip: IPAddress, mac: str) -> None:
        old = self.neighbours.get(ip)
        if old == mac:
            return
        if old is not None:
            self._unuse(old)
        self.neighbours[ip] = mac
        self.mac_uses[mac] = self.mac_uses.get(mac, 0) + 1

    def drop_neighbour(self, ip: IPAddress) -> None:
        mac = self.neighbours.pop(ip)
        self._unuse(mac)

    def _unuse(self, mac: str) -> None:
        left = self.mac_uses[mac] - 1
        if left:
            self.mac_uses[mac] = left
        else:
            del self.mac_uses[mac]

    @property
    def peers(self) -> set[Peer]:
        return {
            Peer(ip=ip, mac=mac, vtep=self.fdb[mac])
            for ip, mac in self.neighbours.items()
            if mac in self.fdb
        }


class FakeKernel:
    def __init__(
        self,
        underlay_mtu: int = 1500,
        host_networks: list[IPNetwork] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._mtu = underlay_mtu
        self._host_networks = list(host_networks or [ipaddress.ip_network("192.0.2.0/24")])
        self.networks: dict[str, FakeNetwork] = {}  # short network id -> network
        # Host-side veth ends still in the host namespace (not yet moved by Docker).
        self.host_links: set[str] = set()
        # Failure injection for undo-on-failure tests: method name -> exception to raise once.
        self.fail_next: dict[str, Exception] = {}

    def _maybe_fail(self, method: str) -> None:
        exc = self.fail_next.pop(method, None)
        if exc is not None:
            raise exc

    def underlay_mtu(self, local_addr: IPAddress | None) -> int:
        return self._mtu

    def host_networks(self) -> list[IPNetwork]:
        return list(self._host_networks)

    def ensure_network(self, spec: NetworkSpec) -> None:
        self._maybe_fail("ensure_network")
        key = names.short(spec.network_id)
        with self._lock:
            for other_key, other in self.networks.items():
                if other_key != key and other.spec.vni == spec.vni:
                    raise KernelError(f"VNI {spec.vni} is already used by network {other_key}")
            current = self.networks.get(key)
            if current is None:
                self.networks[key] = FakeNetwork(spec)
            else:
                current.spec = spec

    def remove_network(self, network_id: str) -> None:
        with self._lock:
            net = self.networks.pop(names.short(network_id), None)
            if net is not None:
                for eid in net.endpoints:
                    self.host_links.discard(names.veth_host(eid))

    def network_ids(self) -> set[str]:
        with self._lock:
            return set(self.networks)

    def ensure_endpoint(self, spec: EndpointSpec) -> EndpointLinks:
        self._maybe_fail("ensure_endpoint")
        with self._lock:
            net = self.networks.get(names.short(spec.network_id))
            if net is None:
                raise KernelError(f"network {names.short(spec.network_id)} has no namespace")
            eid = names.short(spec.endpoint_id)
            if eid not in net.endpoints:
                self.host_links.add(names.veth_host(spec.endpoint_id))
            net.endpoints[eid] = spec
            return EndpointLinks(
                host_side=names.veth_host(spec.endpoint_id),
                bridge_side=names.veth_bridge(spec.endpoint_id),
            )

    def remove_endpoint(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            self.host_links.discard(names.veth_host(endpoint_id))
            net = self.networks.get(names.short(network_id))
            if net is not None:
                net.endpoints.pop(names.short(endpoint_id), None)

    def retire_endpoint(self, network_id: str, endpoint_id: str) -> None:
        self._maybe_fail("retire_endpoint")
        self.remove_endpoint(network_id, endpoint_id)  # "soon" is "now" here

    def endpoint_ids(self, network_id: str) -> set[str]:
        with self._lock:
            net = self.networks.get(names.short(network_id))
            return set(net.endpoints) if net else set()

    def move_to_container(self, endpoint_id: str) -> None:
        """What Docker does after Join: the host-side veth leaves the host namespace."""
        with self._lock:
            self.host_links.discard(names.veth_host(endpoint_id))

    def ensure_peer(self, network_id: str, peer: Peer) -> None:
        self._maybe_fail("ensure_peer")
        with self._lock:
            net = self.networks.get(names.short(network_id))
            if net is None:
                raise KernelError(f"network {names.short(network_id)} has no namespace")
            # Replace semantics, like the kernel's NLM_F_REPLACE: one VTEP per MAC,
            # one MAC per IP.
            net.fdb[peer.mac] = peer.vtep
            net.set_neighbour(peer.ip, peer.mac)

    def remove_peer(self, network_id: str, peer: Peer) -> None:
        with self._lock:
            net = self.networks.get(names.short(network_id))
            if net is None:
                return
            # Only this exact peer: if the MAC has since moved to another VTEP,
            # this is stale news and the newer entries stay.
            remote = net.fdb.get(peer.mac)
            ours = remote == peer.vtep
            if net.neighbours.get(peer.ip) == peer.mac and (ours or remote is None):
                net.drop_neighbour(peer.ip)
            # The FDB entry goes with the last IP that uses the MAC (dual stack).
            if ours and peer.mac not in net.mac_uses:
                del net.fdb[peer.mac]

    def peers(self, network_id: str) -> set[Peer]:
        with self._lock:
            net = self.networks.get(names.short(network_id))
            return net.peers if net else set()

    def remove_orphan_links(self, keep_endpoint_ids: set[str]) -> list[str]:
        keep = {names.veth_host(e) for e in keep_endpoint_ids}
        with self._lock:
            orphans = sorted(self.host_links - keep)
            self.host_links -= set(orphans)
            # Deleting one end of a veth deletes the other: the bridge side goes too.
            for net in self.networks.values():
                for eid in [e for e in net.endpoints if names.veth_host(e) in orphans]:
                    del net.endpoints[eid]
            return orphans
