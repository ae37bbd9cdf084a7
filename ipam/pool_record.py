"""A pool's record: who holds it, and which of its addresses are allocated.

Addresses are offsets from the pool's network address, kept as ``spans``.
Usable offsets exclude the network address and, for IPv4, the broadcast
address; /31 and /32 (and IPv6 /127, /128) have no such addresses, so all of
theirs are usable (RFC 3021). A sub-pool (``--ip-range``) narrows where
*dynamic* addresses come from; an explicit address may be anywhere usable in
the pool (the gateway and aux addresses often sit outside the range).

Dynamic requests take the first free address of the range, or with ``serial``
the first free one after the last dynamic allocation, wrapping around. A
dynamic gateway request takes the first free address of the range, and a pool
has one gateway: asking again returns it.

An address may have an *owner*: the MAC of the endpoint that asked for it
(libnetwork sends it because we say RequiresMACAddress). An explicit address
that is already allocated is granted again when the request has no owner or
the same owner: dockerd retries, replays an endpoint's address after a restart
(with the same MAC), swarm leaders replay their allocations and each node
replays the global space's choices into its local space, none with a
different MAC. A request whose owner differs from the address's owner is a
second container asking for it, and is refused; so is an endpoint asking for
the gateway's address.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from typing import Any

from core.iptypes import IPAddress, IPNetwork
from ipam import record_json, spans
from ipam.errors import AddressInUse, AddressOutOfPool, CorruptRecord, Exhausted

NO_SUB_POOL = ""


@dataclass(frozen=True)
class PoolRecord:
    pool: IPNetwork
    incarnation: str
    # Sub-pool CIDR (NO_SUB_POOL for none) -> the RequestPool options. Several
    # sub-pools of one pool share its addresses, as in Docker.
    holders: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    used: spans.Spans = ()
    gateway: int | None = None
    cursor: int = 0  # where the next serial search starts
    owners: Mapping[int, str] = field(default_factory=dict)  # offset -> endpoint MAC

    def encode(self) -> bytes:
        return record_json.dump(
            {
                "pool": str(self.pool),
                "inc": self.incarnation,
                "holders": {k: dict(v) for k, v in self.holders.items()},
                "used": [list(s) for s in self.used],
                "gw": self.gateway,
                "next": self.cursor,
                "owners": {str(k): v for k, v in sorted(self.owners.items())},
            }
        )

    @classmethod
    def decode(cls, raw: bytes, what: str) -> PoolRecord:
        obj: dict[str, Any] = record_json.load(raw, what)
        try:
            holders = obj["holders"]
            if not isinstance(holders, dict):
                raise TypeError
            used = tuple((int(lo), int(hi)) for lo, hi in obj["used"])
            gw = obj["gw"]
            # Records written before owners were kept have none.
            owners = {int(k): str(v) for k, v in dict(obj.get("owners") or {}).items()}
            rec = cls(
                pool=record_json.network(str(obj["pool"])),
                incarnation=str(obj["inc"]),
                holders={str(k): record_json.string_map(v, what) for k, v in holders.items()},
                used=used,
                gateway=None if gw is None else int(gw),
                cursor=int(obj["next"]),
                owners=owners,
            )
        except (KeyError, TypeError, ValueError):
            raise CorruptRecord(f"store: {what} is malformed") from None
        if not spans.is_normal(rec.used):
            raise CorruptRecord(f"store: {what} has overlapping address ranges")
        return rec


@dataclass(frozen=True)
class Outcome:
    record: PoolRecord
    offset: int
    replayed: bool  # the address was already allocated and is granted again


def usable(pool: IPNetwork) -> spans.Span:
    """The offsets that may be handed out."""
    host_bits = pool.max_prefixlen - pool.prefixlen
    last = (1 << host_bits) - 1
    if host_bits <= 1:
        return 0, last
    # IPv6 has no broadcast address; its offset 0 is the subnet-router anycast.
    return 1, last - 1 if pool.version == 4 else last


def dynamic_range(pool: IPNetwork, sub_pool: IPNetwork | None) -> spans.Span:
    lo, hi = usable(pool)
    if sub_pool is not None:
        base = int(pool.network_address)
        lo = max(lo, int(sub_pool.network_address) - base)
        hi = min(hi, int(sub_pool.broadcast_address) - base)
    return lo, hi


def offset_of(pool: IPNetwork, address: IPAddress) -> int:
    """The address's offset in the pool. Raises AddressOutOfPool if it is not usable."""
    if address.version != pool.version or address not in pool:
        raise AddressOutOfPool(f"Address {address} is not in pool {pool}")
    off = int(address) - int(pool.network_address)
    lo, hi = usable(pool)
    if not lo <= off <= hi:
        kind = "network" if off == 0 else "broadcast"
        raise AddressOutOfPool(f"Address {address} is the {kind} address of pool {pool}")
    return off


def address_at(pool: IPNetwork, off: int) -> IPAddress:
    return ip_address(int(pool.network_address) + off)


def with_holder(rec: PoolRecord, sub: str, options: Mapping[str, str]) -> PoolRecord:
    return replace(rec, holders={**rec.holders, sub: dict(options)})


def without_holder(rec: PoolRecord, sub: str) -> PoolRecord | None:
    """Drop a holder; None when nobody holds the pool any more."""
    holders = {k: v for k, v in rec.holders.items() if k != sub}
    return replace(rec, holders=holders) if holders else None


def allocate(
    rec: PoolRecord,
    *,
    sub_pool: IPNetwork | None,
    explicit: IPAddress | None,
    gateway: bool,
    serial: bool,
    owner: str | None = None,
) -> Outcome:
    if explicit is not None:
        return _allocate_explicit(rec, offset_of(rec.pool, explicit), gateway, owner)
    if gateway and rec.gateway is not None and spans.contains(rec.used, rec.gateway):
        return Outcome(rec, rec.gateway, replayed=True)
    lo, hi = dynamic_range(rec.pool, sub_pool)
    if serial and not gateway:
        off = spans.next_free(rec.used, lo, hi, rec.cursor)
    else:
        off = spans.first_free(rec.used, lo, hi)
    if off is None:
        if sub_pool is not None:
            where = f"the range {sub_pool} (--ip-range) of pool {rec.pool}"
        else:
            where = f"pool {rec.pool}"
        raise Exhausted(
            f"no free address left in {where}: remove a container from the network, "
            "or create the network with a larger --subnet"
        )
    new = replace(
        rec,
        used=spans.add(rec.used, off),
        cursor=off + 1,
        gateway=off if gateway else rec.gateway,
        owners=_owned(rec.owners, off, owner),
    )
    return Outcome(new, off, replayed=False)


def _owned(owners: Mapping[int, str], off: int, owner: str | None) -> Mapping[int, str]:
    return owners if owner is None else {**owners, off: owner}


def _allocate_explicit(rec: PoolRecord, off: int, gateway: bool, owner: str | None) -> Outcome:
    held = spans.contains(rec.used, off)
    address = address_at(rec.pool, off)
    if gateway:
        new = replace(rec, used=spans.add(rec.used, off), gateway=off)
        return Outcome(new, off, replayed=held)
    if held and off == rec.gateway:
        raise AddressInUse(
            f"Address {address} is already in use: it is the gateway of pool {rec.pool}; "
            "choose another --ip"
        )
    if held:
        current = rec.owners.get(off)
        if owner is not None and current is not None and current != owner:
            raise AddressInUse(
                f"Address {address} is already in use by another container on this network "
                f"(pool {rec.pool}); choose another --ip, or leave --ip out to get a free address"
            )
        if owner is not None and current is None:
            return Outcome(replace(rec, owners=_owned(rec.owners, off, owner)), off, True)
        return Outcome(rec, off, replayed=True)
    new = replace(rec, used=spans.add(rec.used, off), owners=_owned(rec.owners, off, owner))
    return Outcome(new, off, replayed=False)


def release(rec: PoolRecord, off: int) -> tuple[PoolRecord, bool]:
    """Free an offset. Returns (record, whether it was allocated)."""
    if not spans.contains(rec.used, off):
        return rec, False
    gw = None if off == rec.gateway else rec.gateway
    owners = {k: v for k, v in rec.owners.items() if k != off}
    return replace(rec, used=spans.remove(rec.used, off), gateway=gw, owners=owners), True
