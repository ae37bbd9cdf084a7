"""The data-path bench's rank test and interval (bench/ranks.py): pure Python, checked against
the normal approximation with continuity and tie corrections (scipy's mannwhitneyu, method
"asymptotic", uses the same)."""

from __future__ import annotations

import pytest

from bench.ranks import compare, mann_whitney, ratio_ci, signed_rank


def test_separated_samples() -> None:
    u, p = mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert u == 0
    assert p == pytest.approx(0.01219, abs=1e-4)


def test_ties_and_identical_samples() -> None:
    assert mann_whitney([1, 2, 3], [1, 2, 3]) == (4.5, 1.0)
    # Mid-ranks 1.5 1.5 3.5 | 3.5 6 6 6 8; tie term 6 + 6 + 24; worked by hand.
    u, p = mann_whitney([1, 1, 2, 3], [2, 3, 3, 4])
    assert u == 2.5
    assert p == pytest.approx(0.1342, abs=1e-3)


def test_interval_brackets_the_ratio_and_is_deterministic() -> None:
    a, b = [10.0, 11, 12, 13, 14, 15], [9.0, 10, 11, 12, 13, 14]
    lo, hi = ratio_ci(a, b)
    assert lo <= 12.5 / 11.5 <= hi
    assert ratio_ci(a, b) == (lo, hi)
    c = compare(a, b)
    assert c["ratio"] == pytest.approx(12.5 / 11.5)
    assert 0.5 < c["p_a_beats_b"] < 1 and c["p"] > 0.05


def test_signed_rank_on_pairs() -> None:
    # Five rounds all won: W+ = 15 against a mean of 7.5 and a variance of 13.75.
    wins, p = signed_rank([(2.0, 1.0), (3.0, 2.0), (5.0, 4.0), (7.0, 6.5), (9.0, 8.9)])
    assert wins == 1.0
    assert p == pytest.approx(0.0590, abs=1e-3)
    assert signed_rank([(1.0, 1.0)]) == (0.5, 1.0)  # no difference at all
    wins, p = signed_rank([(2.0, 1.0), (1.0, 2.0)])
    assert wins == 0.5 and p == 1.0
