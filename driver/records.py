"""What the driver persists, and under which keys.

Keys are versioned. Node-local facts (which networks and endpoints exist on
this host) go to the local store; facts every node must agree on (VNIs) go to
the shared store, which is the same embedded store on one host and etcd across hosts.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from core.iptypes import IPAddress, IPInterface

ROOT = "/swarmnet/v1"
VNI_KEY = f"{ROOT}/vni"
NODE_KEY = f"{ROOT}/local/node"


NETWORKS_PREFIX = f"{ROOT}/local/networks/"
# Encrypted swarm networks this node refused (its kernel has no ESP): the reason, which
# every CreateEndpoint and Join on them answers with (see NetworkDriverService).
REFUSED_PREFIX = f"{ROOT}/local/refused/"
ENDPOINTS_PREFIX = f"{ROOT}/local/endpoints/"


def refused_key(network_id: str) -> str:
    return f"{REFUSED_PREFIX}{network_id}"


def network_key(network_id: str) -> str:
    return NETWORKS_PREFIX + network_id


def endpoint_prefix(network_id: str) -> str:
    return f"{ENDPOINTS_PREFIX}{network_id}/"


def endpoint_key(network_id: str, endpoint_id: str) -> str:
    return endpoint_prefix(network_id) + endpoint_id


def _iface(value: str | None) -> IPInterface | None:
    return None if not value else ipaddress.ip_interface(value)


@dataclass(frozen=True)
class NetworkRecord:
    network_id: str
    vni: int
    mtu: int
    internal: bool = False
    encrypted: bool = False
    gateways: tuple[IPInterface, ...] = ()
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "network_id": self.network_id,
                "vni": self.vni,
                "mtu": self.mtu,
                "internal": self.internal,
                "encrypted": self.encrypted,
                "gateways": [str(g) for g in self.gateways],
                "options": dict(self.options),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NetworkRecord:
        d: dict[str, Any] = json.loads(raw)
        return cls(
            network_id=d["network_id"],
            vni=int(d["vni"]),
            mtu=int(d["mtu"]),
            internal=bool(d.get("internal", False)),
            encrypted=bool(d.get("encrypted", False)),
            gateways=tuple(ipaddress.ip_interface(g) for g in d.get("gateways", [])),
            options=MappingProxyType(dict(d.get("options", {}))),
        )


@dataclass(frozen=True)
class EndpointRecord:
    network_id: str
    endpoint_id: str
    mac: str
    address: IPInterface | None = None
    address_v6: IPInterface | None = None
    joined: bool = False
    sandbox_key: str = ""

    def with_join(self, sandbox_key: str) -> EndpointRecord:
        return replace(self, joined=True, sandbox_key=sandbox_key)

    def with_leave(self) -> EndpointRecord:
        return replace(self, joined=False, sandbox_key="")

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "network_id": self.network_id,
                "endpoint_id": self.endpoint_id,
                "mac": self.mac,
                "address": str(self.address) if self.address else None,
                "address_v6": str(self.address_v6) if self.address_v6 else None,
                "joined": self.joined,
                "sandbox_key": self.sandbox_key,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> EndpointRecord:
        d: dict[str, Any] = json.loads(raw)
        return cls(
            network_id=d["network_id"],
            endpoint_id=d["endpoint_id"],
            mac=d["mac"],
            address=_iface(d.get("address")),
            address_v6=_iface(d.get("address_v6")),
            joined=bool(d.get("joined", False)),
            sandbox_key=d.get("sandbox_key", ""),
        )


@dataclass(frozen=True)
class NodeRecord:
    """This host's identity on the underlay, learned from DiscoverNew."""

    vtep: IPAddress | None = None

    def to_json(self) -> bytes:
        return json.dumps({"vtep": str(self.vtep) if self.vtep else None}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NodeRecord:
        d: dict[str, Any] = json.loads(raw)
        vtep = d.get("vtep")
        return cls(vtep=ipaddress.ip_address(vtep) if vtep else None)
