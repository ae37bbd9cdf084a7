"""Sets of integers kept as sorted, disjoint, non-adjacent inclusive ranges.

Allocated addresses of a pool are stored this way (as offsets from the pool's
network address), so a pool that is filled in order, even a /64, stays a
handful of ranges. Every function is pure: it returns a new tuple.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from itertools import pairwise

Span = tuple[int, int]
Spans = tuple[Span, ...]


def _start(span: Span) -> int:
    return span[0]


def _at_or_before(spans: Spans, x: int) -> int:
    """Index of the last span starting at or before x, or -1."""
    return bisect_right(spans, x, key=_start) - 1


def normalize(ranges: Iterable[Span]) -> Spans:
    """Sort and merge overlapping or adjacent ranges."""
    out: list[Span] = []
    for lo, hi in sorted(ranges):
        if lo > hi:
            raise ValueError(f"empty range {lo}..{hi}")
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def is_normal(spans: Spans) -> bool:
    return all(lo <= hi for lo, hi in spans) and all(a[1] + 1 < b[0] for a, b in pairwise(spans))


def contains(spans: Spans, x: int) -> bool:
    i = _at_or_before(spans, x)
    return i >= 0 and spans[i][1] >= x


def overlapping(spans: Spans, lo: int, hi: int) -> Span | None:
    """The last span that overlaps [lo, hi], or None."""
    i = _at_or_before(spans, hi)
    if i >= 0 and spans[i][1] >= lo:
        return spans[i]
    return None


def add(spans: Spans, x: int) -> Spans:
    """Add x (no-op if present)."""
    i = _at_or_before(spans, x)
    if i >= 0 and spans[i][1] >= x:
        return spans
    joins_left = i >= 0 and spans[i][1] + 1 == x
    joins_right = i + 1 < len(spans) and spans[i + 1][0] == x + 1
    if joins_left and joins_right:
        return (*spans[:i], (spans[i][0], spans[i + 1][1]), *spans[i + 2 :])
    if joins_left:
        return (*spans[:i], (spans[i][0], x), *spans[i + 1 :])
    if joins_right:
        return (*spans[: i + 1], (x, spans[i + 1][1]), *spans[i + 2 :])
    return (*spans[: i + 1], (x, x), *spans[i + 1 :])


def add_range(spans: Spans, lo: int, hi: int) -> Spans:
    """Add every x in [lo, hi], merging with what it overlaps or touches."""
    first = _at_or_before(spans, lo - 1)
    if first < 0 or spans[first][1] < lo - 1:
        first += 1
    last = _at_or_before(spans, hi + 1)
    if last >= first:
        lo = min(lo, spans[first][0])
        hi = max(hi, spans[last][1])
    return (*spans[:first], (lo, hi), *spans[max(last, first - 1) + 1 :])


def remove(spans: Spans, x: int) -> Spans:
    """Remove x (no-op if absent)."""
    i = _at_or_before(spans, x)
    if i < 0 or spans[i][1] < x:
        return spans
    lo, hi = spans[i]
    middle: tuple[Span, ...] = tuple(s for s in ((lo, x - 1), (x + 1, hi)) if s[0] <= s[1])
    return (*spans[:i], *middle, *spans[i + 1 :])


def first_free(spans: Spans, lo: int, hi: int) -> int | None:
    """The smallest x in [lo, hi] not in spans, or None."""
    if lo > hi:
        return None
    i = _at_or_before(spans, lo)
    x = spans[i][1] + 1 if i >= 0 and spans[i][1] >= lo else lo
    # Spans are non-adjacent, so the end of a span + 1 is always free.
    return x if x <= hi else None


def next_free(spans: Spans, lo: int, hi: int, start: int) -> int | None:
    """The first x not in spans going from start up to hi, then wrapping from lo."""
    start = min(max(start, lo), hi + 1)
    found = first_free(spans, start, hi)
    return found if found is not None else first_free(spans, lo, start - 1)


def size(spans: Spans) -> int:
    return sum(hi - lo + 1 for lo, hi in spans)
