"""Comparing two sets of samples without assuming a distribution: the Mann-Whitney U test and a
bootstrap interval for the ratio of medians. Pure Python (no scipy), deterministic."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(U of ``a``, two-sided p-value) by the normal approximation with the tie correction.

    U counts the pairs where ``a`` beats ``b`` (ties count a half); U / (len(a) * len(b)) is
    the probability that a sample of ``a`` exceeds one of ``b``. Fine from about 5 samples a
    side; below that the p-value is only indicative.
    """
    n1, n2 = len(a), len(b)
    if not n1 or not n2:
        raise ValueError("mann_whitney needs samples on both sides")
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return u, 1.0
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var)  # continuity correction
    return u, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def ratio_ci(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, draws: int = 4000, seed: int = 17
) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(a) / median(b)."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        ma = statistics.median(rng.choices(a, k=len(a)))
        mb = statistics.median(rng.choices(b, k=len(b)))
        if mb:
            ratios.append(ma / mb)
    ratios.sort()
    lo = ratios[int((1 - level) / 2 * len(ratios))]
    hi = ratios[min(len(ratios) - 1, int((1 + level) / 2 * len(ratios)))]
    return lo, hi


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Everything the data-path table prints for "a against b"."""
    u, p = mann_whitney(a, b)
    lo, hi = ratio_ci(a, b)
    return {
        "ratio": statistics.median(a) / statistics.median(b),
        "ci_low": lo,
        "ci_high": hi,
        "p": p,
        "p_a_beats_b": u / (len(a) * len(b)),
    }


def signed_rank(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Wilcoxon's signed-rank test on paired samples (a_i, b_i), compared as log(a_i / b_i):
    (the share of pairs where a beats b, two-sided p-value by the normal approximation with
    the tie and continuity corrections; zero differences are dropped).

    The data-path bench pairs the samples of one round: its configurations ran back to back,
    so whatever else loaded the machine then weighed on all of them alike.
    """
    diffs = [math.log(a / b) for a, b in pairs if a > 0 and b > 0 and a != b]
    n = len(diffs)
    if n == 0:
        return 0.5, 1.0
    order = sorted(range(n), key=lambda k: abs(diffs[k]))
    ranks = [0.0] * n
    ties = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and abs(diffs[order[j + 1]]) == abs(diffs[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    w_plus = sum(r for r, d in zip(ranks, diffs, strict=True) if d > 0)
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - ties / 48
    wins = sum(d > 0 for d in diffs) / n
    if var <= 0:
        return wins, 1.0
    z = (abs(w_plus - mean) - 0.5) / math.sqrt(var)
    return wins, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))
