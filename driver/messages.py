"""Typed requests and replies of the network-driver use cases.

The protocol layer (``plugin/codec.py``) builds these from libnetwork's JSON and
turns the replies back into JSON; nothing in ``driver`` sees a raw dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from core.iptypes import IPAddress, IPInterface, IPNetwork

_EMPTY: Mapping[str, IPInterface] = MappingProxyType({})

# The driver options we read (``-o`` on ``docker network create``).
OPT_VNI = "swarmnet.vni"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_ENCRYPTED = "encrypted"
# "off" keeps the kernel's defaults on the data path (driver/kernel/netlink/tuning.py).
OPT_TUNING = "swarmnet.tuning"


@dataclass(frozen=True)
class NetworkOptions:
    """A network's driver options, checked and parsed once, by the codec."""

    # As given: stored with the network, and returned by AllocateNetwork with the VNI added.
    raw: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    vni: int | None = None  # swarmnet.vni: chosen by AllocateNetwork (or by the user)
    mtu: int | None = None  # None: the underlay's MTU less the VXLAN overhead
    encrypted: bool = False
    tuning: bool = True  # swarmnet.tuning; encrypted networks are never tuned


@dataclass(frozen=True)
class IPData:
    """One entry of IPv4Data/IPv6Data: what IPAM gave the network."""

    pool: IPNetwork
    gateway: IPInterface | None = None
    address_space: str = ""
    aux_addresses: Mapping[str, IPInterface] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class AllocateNetwork:
    network_id: str
    options: NetworkOptions
    ipv4: tuple[IPData, ...] = ()
    ipv6: tuple[IPData, ...] = ()


@dataclass(frozen=True)
class CreateNetwork:
    network_id: str
    # The driver options: what the user gave with -o, plus what AllocateNetwork
    # added, as they arrive under com.docker.network.generic.
    options: NetworkOptions
    ipv4: tuple[IPData, ...] = ()
    ipv6: tuple[IPData, ...] = ()
    internal: bool = False
    enable_ipv6: bool = False


@dataclass(frozen=True)
class CreateEndpoint:
    network_id: str
    endpoint_id: str
    address: IPInterface | None = None
    address_v6: IPInterface | None = None
    mac: str | None = None


@dataclass(frozen=True)
class Join:
    network_id: str
    endpoint_id: str
    sandbox_key: str


@dataclass(frozen=True)
class JoinReply:
    src_name: str
    dst_prefix: str


@dataclass(frozen=True)
class NodeDiscovery:
    address: IPAddress
    self_node: bool
    bind_address: IPAddress | None = None
