"""``ipam.subnets.next_subnet`` against a model that simply lists every candidate."""

from __future__ import annotations

from ipaddress import IPv4Network, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from core.iptypes import IPNetwork
from ipam.subnets import next_subnet, within


def model_next(
    pools: list[IPv4Network], prefixlen: int, taken: list[IPNetwork], after: IPNetwork | None
) -> IPNetwork | None:
    candidates = [s for p in pools for s in p.subnets(new_prefix=prefixlen)]
    start = 0
    if after is not None:
        owner = next((p for p in pools if p.overlaps(after)), None)
        if owner is not None:
            # The first candidate of that pool beyond the end of `after`, in list order.
            first = candidates.index(next(owner.subnets(new_prefix=prefixlen)))
            n = len(list(owner.subnets(new_prefix=prefixlen)))
            start = first + n  # past the pool, unless a candidate of it lies beyond `after`
            for i in range(first, first + n):
                if int(candidates[i].network_address) > int(after.broadcast_address):
                    start = i
                    break
    order = candidates[start:] + candidates[:start]
    for c in order:
        if not any(c.overlaps(t) for t in taken if t.version == 4):
            return c
    return None


# Disjoint pools inside 10.0.0.0/16, in any order.
@st.composite
def pool_lists(draw: st.DrawFn) -> list[IPv4Network]:
    slots = draw(st.lists(st.integers(0, 15), min_size=1, max_size=4, unique=True))
    lengths = [draw(st.integers(24, 27)) for _ in slots]
    return [IPv4Network(f"10.0.{slot * 16}.0/{n}") for slot, n in zip(slots, lengths, strict=True)]


@st.composite
def cases(
    draw: st.DrawFn,
) -> tuple[list[IPv4Network], int, list[IPNetwork], IPNetwork | None]:
    pools = draw(pool_lists())
    prefixlen = draw(st.integers(max(p.prefixlen for p in pools), 29))
    anywhere = st.builds(
        lambda a, n: ip_network(f"10.0.{a // 256}.{a % 256}/{n}", strict=False),
        st.integers(0, 255 * 256),
        st.integers(8, 32),
    )
    inside = st.builds(
        lambda p, a, n: ip_network((int(p.network_address) + a, n), strict=False),
        st.sampled_from(pools),
        st.integers(0, 255),
        st.integers(24, 32),
    )
    taken = draw(st.lists(st.one_of(inside, anywhere), max_size=12))
    after = draw(st.none() | inside | anywhere)
    return pools, prefixlen, taken, after


@settings(max_examples=400)
@given(cases())
def test_next_subnet_agrees_with_the_model(
    case: tuple[list[IPv4Network], int, list[IPNetwork], IPNetwork | None],
) -> None:
    pools, prefixlen, taken, after = case
    got = next_subnet(pools, prefixlen, taken, after)
    assert got == model_next(pools, prefixlen, taken, after)
    if got is not None:
        assert got.prefixlen == prefixlen
        assert any(within(got, p) for p in pools)
        assert not any(got.overlaps(t) for t in taken)


def test_order_across_pools_then_wrap_around() -> None:
    pools = [ip_network("10.1.0.0/23"), ip_network("10.0.0.0/24")]  # configured order wins
    taken: list[IPNetwork] = []
    after: IPNetwork | None = None
    seen = []
    for _ in range(3):
        got = next_subnet(pools, 24, taken, after)
        assert got is not None
        seen.append(str(got))
        taken.append(got)
        after = got
    assert seen == ["10.1.0.0/24", "10.1.1.0/24", "10.0.0.0/24"]
    assert next_subnet(pools, 24, taken, after) is None
    # Release the first: the search wraps around to it.
    taken.remove(ip_network("10.1.0.0/24"))
    assert str(next_subnet(pools, 24, taken, after)) == "10.1.0.0/24"


def test_overlaps_are_jumped_not_stepped() -> None:
    # One /12 full of /24s with all but the last taken by a single route: found at once.
    pools = [ip_network("10.16.0.0/12")]
    got = next_subnet(pools, 24, [ip_network("10.16.0.0/13"), ip_network("10.24.0.0/14")], None)
    assert str(got) == "10.28.0.0/24"


def test_other_ip_version_is_ignored() -> None:
    assert str(next_subnet([ip_network("10.0.0.0/24")], 26, [ip_network("::/0")], None)) == (
        "10.0.0.0/26"
    )


def test_wrap_around_reaches_the_candidate_that_holds_the_last_one() -> None:
    # `after` is smaller than a candidate (the mask length was changed): once
    # everything else is taken, the candidate holding it is found again.
    pools = [ip_network("10.0.0.0/24")]
    rest = [ip_network(n) for n in ["10.0.0.8/29", "10.0.0.16/28", "10.0.0.32/27", "10.0.0.64/26"]]
    taken = [*rest, ip_network("10.0.0.128/25")]
    got = next_subnet(pools, 29, taken, ip_network("10.0.0.0/30"))
    assert str(got) == "10.0.0.0/29"
