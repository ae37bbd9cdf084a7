"""A line chart of lag (p50, p99, max) against nodes, drawn on bench.png's canvas (zlib
only: matplotlib is not among the project's dependencies)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.png import RGB, Canvas

SERIES_COLORS: list[RGB] = [(31, 119, 180), (214, 39, 40), (90, 90, 90)]


def lag_chart(path: Path, nodes: Sequence[int], series: Mapping[str, Sequence[float | None]],
              title: str, subtitle: str = "") -> None:
    """Lines of ``series`` (name -> seconds per size) against ``nodes`` on a log axis."""
    w, h, left, right, top, bottom = 720, 440, 70, 20, 60, 50
    cv = Canvas(w, h)
    values = [v for vs in series.values() for v in vs if v is not None]
    ymax = max(values, default=1.0) * 1.1 or 1.0
    ticks = nice_ticks(ymax)
    ymax = ticks[-1]
    lo, hi = math.log10(min(nodes)), math.log10(max(nodes))
    span = (hi - lo) or 1.0

    def xy(n: float, v: float) -> tuple[int, int]:
        x = left + (math.log10(n) - lo) / span * (w - left - right)
        y = h - bottom - v / ymax * (h - top - bottom)
        return round(x), round(y)

    cv.line(left, top, left, h - bottom, (0, 0, 0))
    cv.line(left, h - bottom, w - right, h - bottom, (0, 0, 0))
    for t in ticks:
        _, y = xy(min(nodes), t)
        cv.line(left + 1, y, w - right, y, (225, 225, 225))
        cv.text(8, y - 5, f"{t:g}")
    for n in nodes:
        x, _ = xy(n, 0)
        cv.line(x, h - bottom, x, h - bottom + 5, (0, 0, 0))
        cv.text(x - 4 * len(str(n)), h - bottom + 10, str(n))
    cv.text(w // 2 - 20, h - 18, "nodes")
    cv.text(8, 12, title)
    cv.text(8, 26, subtitle, (90, 90, 90))
    # Drawn last first, thinner on top, so a series equal to a later one stays visible.
    for k, (name, vs) in reversed(list(enumerate(series.items()))):
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        points = [xy(n, v) for n, v in zip(nodes, vs, strict=True) if v is not None]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            cv.line(x0, y0, x1, y1, color, width=5 - k)
        for x, y in points:
            for dx in range(-3, 4):
                for dy in range(-3, 4):
                    cv.dot(x + dx, y + dy, color)
        cv.line(w - 150, top + 10 + 22 * k, w - 120, top + 10 + 22 * k, color, width=3)
        cv.text(w - 110, top + 5 + 22 * k, name, color)
    cv.save(path)


def nice_ticks(top: float) -> list[float]:
    raw = top / 5
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [round(step * i, 6) for i in range(math.ceil(top / step) + 1)]
