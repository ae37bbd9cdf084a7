"""A small RGB canvas written as PNG with zlib alone: bars, lines and a 3x5 pixel font, enough
for the benches' plots (data path, control plane at scale) without adding matplotlib to the
dependencies."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

RGB = tuple[int, int, int]

# 3x5 glyphs, rows top to bottom separated by "|", "#" lit. Text is drawn upper-case.
_FONT = {
    "0": "###|# #|# #|# #|###", "1": " # |## | # | # |###", "2": "###|  #|###|#  |###",
    "3": "###|  #| ##|  #|###", "4": "# #|# #|###|  #|  #", "5": "###|#  |###|  #|###",
    "6": "###|#  |###|# #|###", "7": "###|  #| # | # | # ", "8": "###|# #|###|# #|###",
    "9": "###|# #|###|  #|###", "A": " # |# #|###|# #|# #", "B": "## |# #|## |# #|## ",
    "C": " ##|#  |#  |#  | ##", "D": "## |# #|# #|# #|## ", "E": "###|#  |## |#  |###",
    "F": "###|#  |## |#  |#  ", "G": " ##|#  |# #|# #| ##", "H": "# #|# #|###|# #|# #",
    "I": "###| # | # | # |###", "J": "  #|  #|  #|# #| # ", "K": "# #|# #|## |# #|# #",
    "L": "#  |#  |#  |#  |###", "M": "# #|###|###|# #|# #", "N": "## |# #|# #|# #|# #",
    "O": " # |# #|# #|# #| # ", "P": "## |# #|## |#  |#  ", "Q": " # |# #|# #|## | ##",
    "R": "## |# #|## |# #|# #", "S": " ##|#  | # |  #|## ", "T": "###| # | # | # | # ",
    "U": "# #|# #|# #|# #|###", "V": "# #|# #|# #|# #| # ", "W": "# #|# #|###|###|# #",
    "X": "# #|# #| # |# #|# #", "Y": "# #|# #| # | # | # ", "Z": "###|  #| # |#  |###",
    ".": "   |   |   |   | # ", "-": "   |   |###|   |   ", "/": "  #|  #| # |#  |#  ",
    "%": "# #|  #| # |#  |# #", "(": " # |#  |#  |#  | # ", ")": " # |  #|  #|  #| # ",
    ":": "   | # |   | # |   ", ",": "   |   |   | # |#  ", "=": "   |###|   |###|   ",
    "+": "   | # |###| # |   ", " ": "   |   |   |   |   ", ">": "#  | # |  #| # |#  ",
}


def _rows(glyph: str) -> list[str]:
    return glyph.split("|")


class Canvas:
    def __init__(self, width: int, height: int, background: RGB = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.px = [bytearray(bytes(background) * width) for _ in range(height)]

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        """Filled, corners inclusive, clipped to the canvas."""
        xa, xb = sorted((x0, x1))
        ya, yb = sorted((y0, y1))
        xa, xb = max(xa, 0), min(xb, self.width - 1)
        for y in range(max(ya, 0), min(yb, self.height - 1) + 1):
            self.px[y][xa * 3 : (xb + 1) * 3] = bytes(color) * (xb - xa + 1)

    def dot(self, x: int, y: int, color: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            self.px[y][x * 3 : x * 3 + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: RGB, width: int = 1) -> None:
        """Straight, ``width`` pixels thick, clipped to the canvas."""
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for step in range(steps + 1):
            x = round(x0 + (x1 - x0) * step / steps)
            y = round(y0 + (y1 - y0) * step / steps)
            half = width // 2
            self.rect(x - half, y - half, x - half + width - 1, y - half + width - 1, color)

    def text(self, x: int, y: int, s: str, color: RGB = (0, 0, 0), scale: int = 2) -> int:
        """Draw ``s`` with its top left at (x, y); returns the x after it."""
        for ch in s.upper():
            for r, row in enumerate(_rows(_FONT.get(ch, _FONT[" "]))):
                for c, bit in enumerate(row):
                    if bit == "#":
                        self.rect(x + c * scale, y + r * scale, x + (c + 1) * scale - 1,
                                  y + (r + 1) * scale - 1, color)
            x += 4 * scale
        return x

    @staticmethod
    def text_width(s: str, scale: int = 2) -> int:
        return len(s) * 4 * scale

    def save(self, path: Path) -> None:
        raw = b"".join(b"\x00" + bytes(row) for row in self.px)

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                         + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
