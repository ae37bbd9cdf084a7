"""The Kernel port: everything the driver asks of the kernel, in its own terms.

One implementation talks netlink (``driver.kernel.netlink``); another keeps the
same state in memory (``driver.kernel.fake``) for unit tests. One behaviour suite
(``tests/kernel``) runs against both so the fake stays honest.

Every ``ensure_*`` call is idempotent: it creates what is missing, corrects what
differs, and leaves what matches alone. Every ``remove_*`` call treats "already
gone" as success. Failures raise ``KernelError``; they are never only logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.errors import Internal
from core.iptypes import IPAddress, IPInterface, IPNetwork


class KernelError(Internal):
    """The kernel refused an operation. The message says which object and why."""


@dataclass(frozen=True)
class NetworkSpec:
    """What one overlay network looks like on one host.

    The network lives in its own namespace (named by ``driver.names.netns``)
    holding a bridge and a VXLAN device enslaved to it. The VXLAN device is
    created in the host namespace, so its UDP socket listens on the underlay,
    then moved into the network namespace, as Docker's overlay driver does.
    """

    network_id: str
    vni: int
    mtu: int
    vxlan_port: int
    # Addresses put on the bridge inside the network namespace (the IPAM
    # gateways). They never touch the host namespace, so overlapping subnets
    # on two networks do not clash.
    bridge_addresses: tuple[IPInterface, ...] = ()
    # Source address of the VXLAN tunnel on the underlay; None lets the kernel choose.
    local_vtep: IPAddress | None = None
    # The data-path settings measured in docs/benchmarks.md ("Data path"): no bridge
    # netfilter in the network namespace, and no outer UDP checksum on an IPv4 underlay
    # (RFC 7348's SHOULD). Off for encrypted networks, which were not measured with them.
    tuned: bool = False


@dataclass(frozen=True)
class EndpointSpec:
    network_id: str
    endpoint_id: str
    mac: str  # lower-case, colon separated
    mtu: int


@dataclass(frozen=True)
class EndpointLinks:
    """The two ends of an endpoint's veth pair."""

    host_side: str  # in the host namespace until Docker moves it into the container
    bridge_side: str  # in the network namespace, enslaved to the bridge


# slots: a node holds one per remote endpoint of its networks, tens of thousands at scale.
@dataclass(frozen=True, slots=True)
class Peer:
    """A remote endpoint reachable through a VXLAN tunnel endpoint (VTEP)."""

    ip: IPAddress
    mac: str
    vtep: IPAddress


class Kernel(Protocol):
    def underlay_mtu(self, local_addr: IPAddress | None) -> int:
        """MTU of the interface that carries ``local_addr`` (or the default route)."""
        ...

    def host_networks(self) -> list[IPNetwork]:
        """Every on-link network and route destination in the host namespace.

        The IPAM uses this to skip subnets already in use on this host.
        The default route is left out.
        """
        ...

    def ensure_network(self, spec: NetworkSpec) -> None: ...

    def remove_network(self, network_id: str) -> None:
        """Remove the network's namespace with everything in it."""
        ...

    def network_ids(self) -> set[str]:
        """Short IDs (12 hex) of every network namespace of ours that exists."""
        ...

    def ensure_endpoint(self, spec: EndpointSpec) -> EndpointLinks:
        """Create the veth pair: host side in the host namespace, bridge side on the bridge.

        If the host side is already gone (Docker moved it into a container) and
        the bridge side exists, that is the joined state and is left alone.
        """
        ...

    def remove_endpoint(self, network_id: str, endpoint_id: str) -> None:
        """Delete the veth pair, wherever its host side now is."""
        ...

    def retire_endpoint(self, network_id: str, endpoint_id: str) -> None:
        """Take the veth pair out of service now and delete it soon, off the caller's path.

        After the call the pair carries no traffic, is not in ``endpoint_ids``,
        and ``ensure_endpoint`` with the same ID makes a fresh one.
        """
        ...

    def endpoint_ids(self, network_id: str) -> set[str]:
        """Short IDs (12 hex) of the endpoints whose bridge side exists in the network."""
        ...

    def ensure_peer(self, network_id: str, peer: Peer) -> None:
        """Program a static FDB entry (MAC -> VTEP) and a permanent neighbour (IP -> MAC)."""
        ...

    def remove_peer(self, network_id: str, peer: Peer) -> None: ...

    def peers(self, network_id: str) -> set[Peer]:
        """The remote peers programmed on the network's VXLAN device."""
        ...

    def remove_orphan_links(self, keep_endpoint_ids: set[str]) -> list[str]:
        """Delete host-namespace links of ours whose endpoint is not in ``keep``.

        Returns the names it deleted.
        """
        ...
