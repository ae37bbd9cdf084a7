"""Choosing the next free subnet from the default pools.

Candidates are the aligned subnets of the mask length, pool by pool in the
configured order, each pool in ascending order. The search starts right after
the subnet handed out last and wraps around, so released subnets are reused
only after the rest (Docker's "allocate in order rather than restarting").
A candidate is skipped when it overlaps anything ``taken`` (allocated pools,
host routes and addresses). Overlaps are jumped over, not stepped through, so a
search costs O(taken) rather than O(candidates).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import ip_network

from core.iptypes import IPNetwork
from ipam import spans


def bounds(net: IPNetwork) -> spans.Span:
    """First and last address of a network, as integers."""
    return int(net.network_address), int(net.broadcast_address)


def _align_up(x: int, size: int) -> int:
    return -(-x // size) * size


def _first_fit(lo: int, hi: int, size: int, taken: spans.Spans) -> int | None:
    """The first aligned block of ``size`` in [lo, hi] that overlaps nothing taken."""
    pos = _align_up(lo, size)
    while pos + size - 1 <= hi:
        hit = spans.overlapping(taken, pos, pos + size - 1)
        if hit is None:
            return pos
        pos = _align_up(hit[1] + 1, size)
    return None


def next_subnet(
    pools: Sequence[IPNetwork],
    prefixlen: int,
    taken: Iterable[IPNetwork],
    after: IPNetwork | None,
) -> IPNetwork | None:
    """The next free /prefixlen after ``after`` in pool order, wrapping around; None if full.

    Pools must all be of one IP version, with prefix lengths <= prefixlen.
    ``taken`` may hold networks of either version; the others are ignored.
    """
    if not pools:
        return None
    version = pools[0].version
    blocked = spans.normalize(bounds(n) for n in taken if n.version == version)
    return next_free_subnet(pools, prefixlen, blocked, after)


def next_free_subnet(
    pools: Sequence[IPNetwork],
    prefixlen: int,
    blocked: spans.Spans,
    after: IPNetwork | None,
) -> IPNetwork | None:
    """``next_subnet`` with what is taken as normalized spans (of the pools' IP version)."""
    if not pools:
        return None
    version = pools[0].version
    size = 1 << (pools[0].max_prefixlen - prefixlen)

    # Where to resume: the first pool holding the last subnet handed out.
    k = 0
    resume: int | None = None
    if after is not None and after.version == version:
        for i, pool in enumerate(pools):
            if pool.overlaps(after):
                k = i
                resume = int(after.broadcast_address) + 1
                break

    segments: list[spans.Span] = []
    if resume is None:
        segments = [bounds(p) for p in pools]
    else:
        lo, hi = bounds(pools[k])
        # Candidates of pool k that start after `after`, then the other pools, then
        # the rest of pool k (which includes a candidate that holds `after`).
        first = max(_align_up(resume, size), lo)
        segments.append((first, hi))
        segments.extend(bounds(p) for p in pools[k + 1 :])
        segments.extend(bounds(p) for p in pools[:k])
        segments.append((lo, min(first - 1, hi)))

    for lo, hi in segments:
        found = _first_fit(lo, hi, size, blocked)
        if found is not None:
            return ip_network((found, prefixlen))
    return None


def within(inner: IPNetwork, outer: IPNetwork) -> bool:
    """Whether ``inner`` lies inside ``outer`` (same IP version)."""
    if inner.version != outer.version:
        return False
    lo, hi = bounds(outer)
    ilo, ihi = bounds(inner)
    return lo <= ilo and ihi <= hi
