"""IPAM settings: the default address pools and the size of the subnets cut from them.

They come from the plugin settings ``DEFAULT_ADDR_POOLS`` and
``DEFAULT_ADDR_POOL_MASK_LENGTH`` (like dockerd's ``--default-addr-pool`` and
``--default-addr-pool-mask-length``). An empty setting means the default below.

Why 198.18.0.0/15 by default: Docker already uses 10.0.0.0/8 for swarm and
172.17.0.0/16-172.31.0.0/16 and 192.168.0.0/16 for local networks, and what is
left of RFC 1918 (172.16.0.0/16, and 10/8 outside swarm's first subnets) is
where LANs, VPNs and cloud VPCs usually live. 198.18.0.0/15 (RFC 2544, RFC
6890) is reserved, never globally routed and almost never configured on
hosts; it holds 512 /24 networks. Subnets that overlap a route or an address
on the host are skipped anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_address, ip_network

DEFAULT_ADDR_POOLS = "198.18.0.0/15"
DEFAULT_MASK_LENGTH = 24
# A network needs room for at least a gateway and one container.
MAX_MASK_LENGTH = 30


@dataclass(frozen=True)
class IpamConfig:
    default_pools: tuple[IPv4Network, ...]
    mask_length: int = DEFAULT_MASK_LENGTH
    # SCOPE=local: the local address space belongs to one standalone dockerd,
    # which then never replays (RequiresRequestReplay is false, our state
    # persists). So a RequestPool there for a pool that is already held comes
    # from a second network, and is refused as Docker refuses it. With swarm,
    # the local space mirrors the manager's choices and both spaces see
    # replays (a new leader, a node re-creating a network after a dockerd
    # restart) that no field of the request tells from a second network.
    standalone: bool = False

    @property
    def requires_replay(self) -> bool:
        """GetCapabilities' RequiresRequestReplay. Every replayed call succeeds
        idempotently; asking for replays lets dockerd restore its local-scope
        networks' pools if the plugin's store was lost. Standalone, a replayed
        RequestPool could not be told from a second network with that subnet."""
        return not self.standalone

    def __post_init__(self) -> None:
        _check(self.default_pools, self.mask_length)

    @classmethod
    def from_strings(cls, pools: str, mask_length: str, *, standalone: bool = False) -> IpamConfig:
        """Parse the plugin settings. Raises ValueError naming the setting."""
        return cls(
            default_pools=_parse_pools(pools),
            mask_length=_parse_mask(mask_length),
            standalone=standalone,
        )


def _parse_pools(text: str) -> tuple[IPv4Network, ...]:
    items = [s for s in re.split(r"[\s,]+", text.strip() or DEFAULT_ADDR_POOLS) if s]
    pools: list[IPv4Network] = []
    for item in items:
        address, slash, _ = item.partition("/")
        try:
            net = ip_network(item, strict=False)
            host = ip_address(address)
        except ValueError:
            raise ValueError(
                f"DEFAULT_ADDR_POOLS: {item!r} is not a CIDR network (like 198.18.0.0/15)"
            ) from None
        if not slash:
            raise ValueError(f"DEFAULT_ADDR_POOLS: {item!r} has no prefix length (like /16)")
        if not isinstance(net, IPv4Network):
            raise ValueError(
                f"DEFAULT_ADDR_POOLS: {item} is IPv6; default pools are IPv4 only "
                "(give IPv6 networks an explicit --subnet)"
            )
        if host != net.network_address:
            raise ValueError(f"DEFAULT_ADDR_POOLS: {item} has host bits set; did you mean {net}?")
        pools.append(net)
    return tuple(pools)


def _parse_mask(text: str) -> int:
    text = text.strip()
    if not text:
        return DEFAULT_MASK_LENGTH
    if not text.isdigit():
        raise ValueError(f"DEFAULT_ADDR_POOL_MASK_LENGTH: {text!r} is not a number")
    return int(text)


def _check(pools: tuple[IPv4Network, ...], mask: int) -> None:
    if not pools:
        raise ValueError("DEFAULT_ADDR_POOLS: give at least one CIDR network")
    if not 1 <= mask <= MAX_MASK_LENGTH:
        raise ValueError(
            f"DEFAULT_ADDR_POOL_MASK_LENGTH: {mask} is out of range; use 1 to {MAX_MASK_LENGTH} "
            "(a network needs room for a gateway and a container)"
        )
    for i, pool in enumerate(pools):
        if pool.prefixlen > mask:
            raise ValueError(
                f"DEFAULT_ADDR_POOLS: {pool} is smaller than a /{mask} "
                "(DEFAULT_ADDR_POOL_MASK_LENGTH); use a bigger pool or a longer mask"
            )
        for other in pools[:i]:
            if pool.overlaps(other):
                raise ValueError(f"DEFAULT_ADDR_POOLS: {pool} overlaps {other}")
