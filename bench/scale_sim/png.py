"""A line chart as a PNG with nothing but zlib: lag (p50, p99, max) against nodes.

matplotlib is not among the project's dependencies, and one chart does not justify it.
Text uses a 3x5 pixel font of the few characters the chart needs.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

Color = tuple[int, int, int]

FONT = {  # 3 columns x 5 rows, a row per string, "#" = ink
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
    ".": ("...", "...", "...", "...", ".#."), " ": ("...", "...", "...", "...", "..."),
    "p": ("###", "#.#", "###", "#..", "#.."), "m": ("...", "###", "###", "#.#", "#.#"),
    "a": ("...", "##.", "..#", "###", "###"), "x": ("...", "#.#", ".#.", ".#.", "#.#"),
    "n": ("...", "##.", "#.#", "#.#", "#.#"), "o": ("...", "###", "#.#", "#.#", "###"),
    "d": ("..#", "..#", "###", "#.#", "###"), "e": ("###", "#.#", "###", "#..", "###"),
    "s": ("###", "#..", "###", "..#", "###"), "l": ("#..", "#..", "#..", "#..", "###"),
    "g": ("###", "#.#", "###", "..#", "###"), "(": (".#.", "#..", "#..", "#..", ".#."),
    ")": (".#.", "..#", "..#", "..#", ".#."), "-": ("...", "...", "###", "...", "..."),
    ">": ("#..", ".#.", "..#", ".#.", "#.."), "j": ("..#", "...", "..#", "#.#", "###"),
    "i": (".#.", "...", ".#.", ".#.", ".#."), "r": ("...", "###", "#..", "#..", "#.."),
    "t": (".#.", "###", ".#.", ".#.", ".##"), "b": ("#..", "#..", "###", "#.#", "###"),
    "v": ("...", "#.#", "#.#", "#.#", ".#."), "y": ("#.#", "#.#", "###", "..#", "###"),
    "h": ("#..", "#..", "###", "#.#", "#.#"), "w": ("...", "#.#", "#.#", "###", "###"),
    "u": ("...", "#.#", "#.#", "#.#", "###"), "c": ("...", "###", "#..", "#..", "###"),
    "k": ("#..", "#.#", "##.", "#.#", "#.#"), "f": (".##", ".#.", "###", ".#.", ".#."),
    "q": ("###", "#.#", "###", "..#", "..#"), "z": ("###", "..#", ".#.", "#..", "###"),
    ",": ("...", "...", "...", ".#.", "#.."), "=": ("...", "###", "...", "###", "..."),
}


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, c: Color) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i : i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: Color, width: int = 1) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            x = round(x0 + (x1 - x0) * s / steps)
            y = round(y0 + (y1 - y0) * s / steps)
            for dx in range(width):
                for dy in range(width):
                    self.dot(x + dx - width // 2, y + dy - width // 2, c)

    def text(self, x: int, y: int, s: str, c: Color = (0, 0, 0), scale: int = 2) -> None:
        for ch in s.lower():
            glyph = FONT.get(ch, FONT[" "])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        for dx in range(scale):
                            for dy in range(scale):
                                self.dot(x + col * scale + dx, y + row * scale + dy, c)
            x += 4 * scale

    def save(self, path: Path) -> None:
        raw = b"".join(
            b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3]) for y in range(self.h)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                         + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


SERIES_COLORS: list[Color] = [(31, 119, 180), (214, 39, 40), (90, 90, 90)]


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
