"""The store layout: every key swarmnet-overlay reads or writes, in one place.

The root (``/swarmnet/v1``) is chosen by the composition root (``plugin/app.py``)
and handed to everything that touches a store, so no other module writes it::

    <root>/local/networks/<network>             this host's networks (driver NetworkRecord)
    <root>/local/endpoints/<network>/<endpoint> this host's endpoints (driver EndpointRecord)
    <root>/local/refused/<network>              encrypted networks this host refused: the reason
    <root>/local/vtep                           this host's data-path address (driver VtepRecord;
                                                written as <root>/local/node before, read once
                                                and moved)
    <root>/local/node-id                        this host's identity in the shared store (a UUID)
    <root>/vni                                  the VNI table (driver.vni)
    <root>/ipsec/keys                           the IPsec key ring with its master secrets
    <root>/ipsec/nodes                          VTEP address -> 12-bit node index
    <root>/ipsec/acks/<vtep>                    what each node installed and sends with
    <root>/ipam/<space>/index                   every pool of an IPAM space (local or global)
    <root>/ipam/<space>/pools/<net>_<len>       one pool's holders and addresses
    <root>/nodes/<node-id>                      a live node (etcd, on its lease)
    <root>/peers/<network>/<endpoint>           a published endpoint (etcd, on its lease)
    <root>/lb/services/<network>/<service>      a service VIP and its backends
    <root>/lb/marks                             (network, service) -> fwmark index
    <root>/lb/collector                         the elected collector's lease (etcd)

``local/...`` lives in the host's own store; everything else in the shared one
(the same embedded store on one host, etcd across hosts).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreLayout:
    root: str

    # -- this host's own store -------------------------------------------------

    @property
    def networks(self) -> str:
        return f"{self.root}/local/networks/"

    def network(self, network_id: str) -> str:
        return self.networks + network_id

    @property
    def endpoints(self) -> str:
        return f"{self.root}/local/endpoints/"

    def network_endpoints(self, network_id: str) -> str:
        return f"{self.endpoints}{network_id}/"

    def endpoint(self, network_id: str, endpoint_id: str) -> str:
        return self.network_endpoints(network_id) + endpoint_id

    def refused(self, network_id: str) -> str:
        return f"{self.root}/local/refused/{network_id}"

    @property
    def vtep(self) -> str:
        return f"{self.root}/local/vtep"

    @property
    def legacy_vtep(self) -> str:
        """Where the VTEP record lived before it had a name of its own (read once, then moved)."""
        return f"{self.root}/local/node"

    @property
    def node_id(self) -> str:
        return f"{self.root}/local/node-id"

    # -- the shared store ------------------------------------------------------

    @property
    def vni(self) -> str:
        return f"{self.root}/vni"

    @property
    def ipsec_keys(self) -> str:
        return f"{self.root}/ipsec/keys"

    @property
    def ipsec_nodes(self) -> str:
        return f"{self.root}/ipsec/nodes"

    @property
    def ipsec_acks(self) -> str:
        return f"{self.root}/ipsec/acks/"

    def ipsec_ack(self, vtep: str) -> str:
        return self.ipsec_acks + vtep

    def ipam_index(self, space: str) -> str:
        return f"{self.root}/ipam/{space}/index"

    def ipam_pools(self, space: str) -> str:
        return f"{self.root}/ipam/{space}/pools/"

    def ipam_pool(self, space: str, cidr: str) -> str:
        return self.ipam_pools(space) + cidr.replace("/", "_")

    @property
    def nodes(self) -> str:
        return f"{self.root}/nodes/"

    @property
    def peers(self) -> str:
        return f"{self.root}/peers/"

    def peer(self, network_id: str, endpoint_id: str) -> str:
        return f"{self.peers}{network_id}/{endpoint_id}"

    @property
    def lb_services(self) -> str:
        return f"{self.root}/lb/services/"

    def lb_network_services(self, network_id: str) -> str:
        return f"{self.lb_services}{network_id}/"

    def lb_service(self, network_id: str, service_id: str) -> str:
        return self.lb_network_services(network_id) + service_id

    @property
    def lb_marks(self) -> str:
        return f"{self.root}/lb/marks"

    @property
    def lb_collector(self) -> str:
        return f"{self.root}/lb/collector"
