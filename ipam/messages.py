"""Typed requests and grants of the IPAM use cases (the codec builds and reads them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.iptypes import IPAddress, IPInterface, IPNetwork

# Option keys libnetwork and swarmkit send.
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY_TYPE = "com.docker.network.gateway"
SERIAL_OPTION = "com.docker.network.ipam.serial"
# libnetwork puts the endpoint's MAC here when GetCapabilities says
# RequiresMACAddress; it is the only per-endpoint value a RequestAddress carries
# (dockerd 20.10), so it tells a second container from a replay of the first.
MAC_OPTION = "com.docker.network.endpoint.macaddress"


@dataclass(frozen=True)
class PoolRequest:
    """IpamDriver.RequestPool. ``pool`` None asks for the next default subnet."""

    address_space: str
    pool: IPNetwork | None
    sub_pool: IPNetwork | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    v6: bool = False


@dataclass(frozen=True)
class PoolGrant:
    pool_id: str
    pool: IPNetwork
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AddressRequest:
    """IpamDriver.RequestAddress. ``address`` None asks for any free address."""

    pool_id: str
    address: IPAddress | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_gateway(self) -> bool:
        return self.options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_TYPE

    @property
    def owner(self) -> str | None:
        """The requesting endpoint's MAC, or None (gateway, aux address, swarm allocator)."""
        mac = self.options.get(MAC_OPTION, "").strip().lower()
        return mac or None


@dataclass(frozen=True)
class AddressGrant:
    """The address with the pool's prefix length, as Docker wants it ("10.1.2.3/24")."""

    address: IPInterface
    data: Mapping[str, str] = field(default_factory=dict)
