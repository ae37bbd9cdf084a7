"""The pool index of one address space, and its pure transitions.

One record per address space lists every allocated pool, so the overlap check
and the insert happen in one compare-and-swap. Each pool carries an
incarnation (a random tag chosen when the pool is first allocated) that ties it
to its address record (``pool_record.PoolRecord``): if a pool is released and
allocated again, leftovers of the old record are recognised and discarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.iptypes import IPNetwork
from ipam import record_json, spans, subnets
from ipam.errors import CorruptRecord, Exhausted, PoolOverlap


@dataclass(frozen=True)
class PoolIndex:
    pools: Mapping[str, str] = field(default_factory=dict)  # canonical CIDR -> incarnation
    last: str | None = None  # the subnet the dynamic search handed out last
    # The pools as normalized integer spans per IP version, carried from an index
    # to the next one so a long run of dynamic requests does not rebuild them.
    spans_by_version: Mapping[int, spans.Spans] | None = field(
        default=None, compare=False, repr=False
    )

    def blocked(self, version: int) -> spans.Spans:
        if self.spans_by_version is not None:
            return self.spans_by_version.get(version, ())
        return spans.normalize(
            (lo, hi) for v, lo, hi in map(record_json.span, self.pools) if v == version
        )

    def encode(self) -> bytes:
        return record_json.dump({"last": self.last, "pools": dict(self.pools)})

    @classmethod
    def decode(cls, raw: bytes | None, what: str) -> PoolIndex:
        if raw is None:
            return cls()
        obj: dict[str, Any] = record_json.load(raw, what)
        last = obj.get("last")
        if last is not None and not isinstance(last, str):
            raise CorruptRecord(f"store: {what} has a bad 'last'")
        return cls(pools=record_json.string_map(obj.get("pools"), what), last=last)


def reserve_explicit(
    index: PoolIndex, net: IPNetwork, incarnation: str
) -> tuple[PoolIndex, str, bool]:
    """Add ``net``. Returns (index, the pool's incarnation, whether it is new).

    The very same pool is not an overlap: that is a replay (a swarm leader or a
    node re-requesting what it holds), answered with the existing incarnation.
    """
    key = str(net)
    held = index.pools.get(key)
    if held is not None:
        return index, held, False
    lo, hi = subnets.bounds(net)
    for other in index.pools:
        version, other_lo, other_hi = record_json.span(other)
        if version == net.version and other_lo <= hi and lo <= other_hi:
            raise PoolOverlap(
                f"Pool {net} overlaps with pool {other} of another network in this address "
                "space; give the network a --subnet that overlaps no other network's"
            )
    carried = None
    if index.spans_by_version is not None:
        carried = {**index.spans_by_version}
        carried[net.version] = spans.add_range(index.blocked(net.version), lo, hi)
    new = PoolIndex(
        pools={**index.pools, key: incarnation}, last=index.last, spans_by_version=carried
    )
    return new, incarnation, True


def reserve_dynamic(
    index: PoolIndex,
    defaults: Sequence[IPNetwork],
    prefixlen: int,
    host: Iterable[IPNetwork],
    incarnation: str,
) -> tuple[PoolIndex, IPNetwork]:
    """Add the next free subnet of the default pools (see ``subnets.next_subnet``)."""
    after = record_json.network(index.last) if index.last is not None else None
    version = defaults[0].version if defaults else 4
    held = index.blocked(version)
    blocked = held
    for n in host:
        if n.version == version:
            blocked = spans.add_range(blocked, *subnets.bounds(n))
    net = subnets.next_free_subnet(defaults, prefixlen, blocked, after)
    if net is None:
        names = ", ".join(str(p) for p in defaults)
        raise Exhausted(
            f"no free /{prefixlen} subnet left in the default address pools {names}: every "
            "one is used by a network or overlaps a route or address on this host; remove "
            "unused networks, give the network a --subnet, or add pools with the plugin "
            "setting DEFAULT_ADDR_POOLS"
        )
    key = str(net)
    carried = {v: index.blocked(v) for v in (4, 6)}
    carried[version] = spans.add_range(held, *subnets.bounds(net))
    new = PoolIndex(pools={**index.pools, key: incarnation}, last=key, spans_by_version=carried)
    return new, net


def unreserve(index: PoolIndex, net: IPNetwork, incarnation: str) -> PoolIndex:
    """Drop ``net`` if it is still the incarnation we released."""
    key = str(net)
    if index.pools.get(key) != incarnation:
        return index
    pools = {k: v for k, v in index.pools.items() if k != key}
    return PoolIndex(pools=pools, last=index.last)  # spans are rebuilt when next needed
