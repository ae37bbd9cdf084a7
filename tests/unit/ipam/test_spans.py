"""``ipam.spans`` agrees with a plain Python set."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ipam import spans

small = st.integers(min_value=0, max_value=40)
ops = st.lists(st.tuples(st.sampled_from(["add", "remove"]), small), max_size=60)


def as_set(s: spans.Spans) -> set[int]:
    return {x for lo, hi in s for x in range(lo, hi + 1)}


@given(ops)
def test_add_and_remove_agree_with_a_set(steps: list[tuple[str, int]]) -> None:
    s: spans.Spans = ()
    model: set[int] = set()
    for op, x in steps:
        if op == "add":
            s = spans.add(s, x)
            model.add(x)
        else:
            s = spans.remove(s, x)
            model.discard(x)
        assert spans.is_normal(s)
        assert as_set(s) == model
        assert spans.size(s) == len(model)
        assert all(spans.contains(s, y) == (y in model) for y in range(-1, 42))


@given(st.sets(small), small, small, small)
def test_first_free_and_next_free_agree_with_a_set(
    taken: set[int], lo: int, hi: int, start: int
) -> None:
    s = spans.normalize((x, x) for x in taken)
    free = [x for x in range(lo, hi + 1) if x not in taken]
    assert spans.first_free(s, lo, hi) == (free[0] if free else None)
    after = [x for x in free if x >= start] + [x for x in free if x < start]
    assert spans.next_free(s, lo, hi, start) == (after[0] if after else None)


@given(st.lists(st.tuples(small, small).map(lambda t: (min(t), max(t))), max_size=10))
def test_normalize_merges_overlapping_and_adjacent(ranges: list[tuple[int, int]]) -> None:
    s = spans.normalize(ranges)
    assert spans.is_normal(s)
    assert as_set(s) == {x for lo, hi in ranges for x in range(lo, hi + 1)}


def test_a_pool_filled_in_order_stays_one_span() -> None:
    s: spans.Spans = ()
    for x in range(1, 1000):
        s = spans.add(s, x)
    assert s == ((1, 999),)


@given(st.sets(small), small, st.integers(0, 8))
def test_add_range_agrees_with_a_set(taken: set[int], lo: int, width: int) -> None:
    s = spans.normalize((x, x) for x in taken)
    got = spans.add_range(s, lo, lo + width)
    assert spans.is_normal(got)
    assert as_set(got) == taken | set(range(lo, lo + width + 1))
