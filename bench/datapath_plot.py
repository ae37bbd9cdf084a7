"""The data-path bench's plot: per metric, one bar per configuration (the median, its value at
the foot), a line from the 25th to the 75th percentile, and every sample as a dot."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.common import percentile
from bench.png import RGB, Canvas

COLORS: dict[str, RGB] = {"ours": (31, 119, 180), "ours-plain": (158, 202, 225),
                          "docker": (214, 39, 40), "underlay": (120, 120, 120)}
NAMES = {"ours": "OURS", "ours-plain": "OURS, TUNING OFF", "docker": "DOCKER OVERLAY",
         "underlay": "UNDERLAY"}
TITLES = {"tcp": "TCP GBIT/S", "udp64": "UDP 64 B, KPPS", "udp1400": "UDP 1400 B, KPPS",
          "rtt": "PING RTT, MS (LOWER IS BETTER)"}
PANEL_W, PANEL_H, TOP, BOTTOM = 300, 260, 40, 30


def plot(samples: dict[str, dict[str, list[float]]], path: Path) -> None:
    metrics = [m for m in TITLES if m in samples]
    canvas = Canvas(PANEL_W * len(metrics) + 20, PANEL_H + TOP + BOTTOM + 40)
    for k, metric in enumerate(metrics):
        _panel(canvas, 10 + k * PANEL_W, metric, samples[metric])
    x = 20
    for config, color in COLORS.items():  # legend
        canvas.rect(x, PANEL_H + TOP + BOTTOM + 10, x + 14, PANEL_H + TOP + BOTTOM + 24, color)
        x = canvas.text(x + 20, PANEL_H + TOP + BOTTOM + 12, NAMES[config]) + 30
    canvas.save(path)


def _panel(canvas: Canvas, x0: int, metric: str, by_config: dict[str, list[float]]) -> None:
    canvas.text(x0 + 10, 10, TITLES[metric])
    configs = [c for c in COLORS if by_config.get(c)]
    # The scale ends above the 95th percentiles: a few slow pings would squash the bars.
    top = max(percentile(by_config[c], 95) for c in configs) * 1.15 or 1.0
    base = TOP + PANEL_H  # y of zero
    canvas.rect(x0 + 10, base, x0 + PANEL_W - 20, base + 1, (0, 0, 0))  # axis
    slot = (PANEL_W - 40) // max(len(configs), 1)
    for i, config in enumerate(configs):
        values = by_config[config]
        med = statistics.median(values)
        left = x0 + 20 + i * slot
        bar_w = slot - 16

        def y(v: float) -> int:
            return base - round(min(v, top) / top * PANEL_H)

        canvas.rect(left, y(med), left + bar_w, base - 1, COLORS[config])
        mid = left + bar_w // 2
        canvas.rect(mid - 1, y(percentile(values, 75)), mid + 1, y(percentile(values, 25)),
                    (0, 0, 0))
        for v in values:
            canvas.rect(mid + 6, y(v) - 1, mid + 8, y(v) + 1, (40, 40, 40))
        label = f"{med:.3g}"
        # The median's value at the foot of its bar, in white.
        canvas.text(left + (bar_w - Canvas.text_width(label)) // 2, base - 16, label,
                    (255, 255, 255))
