"""This host's networks, endpoints, refusals and VTEP, as kept in the local store.

The VTEP is read once, at start, and held in memory from then on (it changes only
through ``set_vtep``), so the calls that need it every time cost no store read.
"""

from __future__ import annotations

import logging

from core.errors import Conflict
from core.iptypes import IPAddress
from core.layout import StoreLayout
from driver import names
from driver.config import DriverConfig
from driver.errors import UnknownObject
from driver.kernel.port import NetworkSpec
from driver.records import EndpointRecord, NetworkRecord, VtepRecord, decode, encode
from driver.store_port import KV

log = logging.getLogger(__name__)


class LocalState:
    def __init__(self, kv: KV, layout: StoreLayout, config: DriverConfig) -> None:
        self.kv = kv
        self.keys = layout
        self._config = config
        self._data_path_addr = config.data_path_addr
        self._vtep = self._load_vtep()

    # -- this host's VTEP --------------------------------------------------------

    def _load_vtep(self) -> VtepRecord:
        raw = self.kv.get(self.keys.vtep)
        if raw is not None:
            self.kv.delete(self.keys.legacy_vtep)  # a move cut short before its delete
            return decode(VtepRecord, raw)
        old = self.kv.get(self.keys.legacy_vtep)
        if old is None:
            return VtepRecord()
        # Written by a version that kept it as local/node: move it, keeping its value.
        record = decode(VtepRecord, old)
        self.kv.put(self.keys.vtep, encode(record))
        self.kv.delete(self.keys.legacy_vtep)
        log.info("store: moved %s to %s", self.keys.legacy_vtep, self.keys.vtep)
        return record

    def learned_vtep(self) -> IPAddress | None:
        """What DiscoverNew said last (None before the first one)."""
        return self._vtep.vtep

    def vtep(self) -> IPAddress | None:
        """This node's data-path address: the DATA_PATH_ADDR setting, else DiscoverNew's."""
        return self._data_path_addr if self._data_path_addr is not None else self._vtep.vtep

    def set_vtep(self, vtep: IPAddress) -> None:
        record = VtepRecord(vtep=vtep)
        self.kv.put(self.keys.vtep, encode(record))
        self._vtep = record

    def spec(self, net: NetworkRecord) -> NetworkSpec:
        """What the kernel makes for the network on this host."""
        return NetworkSpec(
            network_id=net.network_id,
            vni=net.vni,
            mtu=net.mtu,
            vxlan_port=self._config.vxlan_port_for(net.encrypted),
            bridge_addresses=net.gateways,
            local_vtep=self.vtep(),
            tuned=net.tuned and not net.encrypted,
        )

    # -- networks ----------------------------------------------------------------

    def network(self, network_id: str) -> NetworkRecord | None:
        raw = self.kv.get(self.keys.network(network_id))
        return None if raw is None else decode(NetworkRecord, raw)

    def require_network(self, network_id: str) -> NetworkRecord:
        net = self.network(network_id)
        if net is None:
            raise UnknownObject(f"NetworkID: unknown network {names.short(network_id)}")
        return net

    def networks(self) -> list[NetworkRecord]:
        return [decode(NetworkRecord, raw) for raw in self.kv.list(self.keys.networks).values()]

    def put_network(self, net: NetworkRecord) -> None:
        self.kv.put(self.keys.network(net.network_id), encode(net))

    def delete_network(self, network_id: str) -> None:
        self.kv.delete(self.keys.network(network_id))

    def short_id_owner(self, network_id: str) -> str | None:
        """Another stored network with this network's 12-character kernel name, if any."""
        short = names.short(network_id)
        for net in self.networks():
            if net.network_id != network_id and names.short(net.network_id) == short:
                return net.network_id
        return None

    def refuse_name_clash(self, network_id: str) -> None:
        """Kernel names use the first 12 characters: two such networks would share a namespace."""
        other = self.short_id_owner(network_id)
        if other is not None:
            short = names.short(network_id)
            raise Conflict(
                f"NetworkID: network {names.cut(network_id)} and network {names.cut(other)} "
                f"share the first 12 characters ({short}), which name the kernel namespace; "
                "they cannot both exist on this node"
            )

    # -- refused networks ----------------------------------------------------------

    def refusal(self, network_id: str) -> str | None:
        """Why this node refused the (encrypted) network, or None."""
        reason = self.kv.get(self.keys.refused(network_id))
        return None if reason is None else reason.decode(errors="replace")

    def refuse(self, network_id: str, reason: str) -> None:
        self.kv.put(self.keys.refused(network_id), reason.encode())

    def unrefuse(self, network_id: str) -> None:
        self.kv.delete(self.keys.refused(network_id))

    # -- endpoints ---------------------------------------------------------------

    def endpoint(self, network_id: str, endpoint_id: str) -> EndpointRecord | None:
        raw = self.kv.get(self.keys.endpoint(network_id, endpoint_id))
        return None if raw is None else decode(EndpointRecord, raw)

    def require_endpoint(self, network_id: str, endpoint_id: str) -> EndpointRecord:
        ep = self.endpoint(network_id, endpoint_id)
        if ep is None:
            raise UnknownObject(
                f"EndpointID: unknown endpoint {names.short(endpoint_id)} "
                f"on network {names.short(network_id)}"
            )
        return ep

    def endpoints(self, network_id: str) -> list[EndpointRecord]:
        raw = self.kv.list(self.keys.network_endpoints(network_id))
        return [decode(EndpointRecord, v) for v in raw.values()]

    def endpoint_ids(self, network_id: str, starting: str = "") -> list[str]:
        """IDs of the network's endpoints (that start with ``starting``), from the keys alone."""
        prefix = self.keys.network_endpoints(network_id)
        return [key[len(prefix) :] for key in self.kv.list(prefix + starting)]

    def joined_endpoints(self) -> list[EndpointRecord]:
        eps = (decode(EndpointRecord, raw) for raw in self.kv.list(self.keys.endpoints).values())
        return [ep for ep in eps if ep.joined]

    def put_endpoint(self, ep: EndpointRecord) -> None:
        self.kv.put(self.keys.endpoint(ep.network_id, ep.endpoint_id), encode(ep))

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        self.kv.delete(self.keys.endpoint(network_id, endpoint_id))

    def refuse_endpoint_name_clash(self, network_id: str, endpoint_id: str) -> None:
        """Veth names use the first 12 characters: two such endpoints would share a veth.

        Checked within the network (a range read of that prefix, so CreateEndpoint
        stays cheap); across networks only the host side could clash, and only
        until Docker moves it into the container.
        """
        short = names.short(endpoint_id)
        for other in self.endpoint_ids(network_id, short):
            if other != endpoint_id and names.short(other) == short:
                raise Conflict(
                    f"EndpointID: endpoint {names.cut(endpoint_id)} and endpoint "
                    f"{names.cut(other)} share the first 12 characters ({short}), which name "
                    "their veth devices; they cannot both exist on this node"
                )
