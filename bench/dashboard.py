"""Render docs/grafana-dashboard.json's panels from a real Prometheus's data, as a PNG.

Grafana is not installable on the build machine, so docs/metrics.md shows this rendering
instead: each panel's PromQL, evaluated over a time range with Prometheus's
``/api/v1/query_range``, drawn with matplotlib in the dashboard's grid. Variables
(``$instance``, ``$job``) match everything.

    python -m bench.dashboard --prometheus http://127.0.0.1:9090 --out docs/grafana-dashboard.png

tests/e2e/test_metrics.py renders it from its own Prometheus (the one that scraped the
plugin) when SWARMNET_DASHBOARD_PNG names the output file. Needs matplotlib
(``pip install matplotlib``); it is not a dependency of the plugin.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"

# (promql, start, end, step) -> Prometheus's "result" list of a matrix query
QueryRange = Callable[[str, float, float, float], list[dict[str, Any]]]


def http_query_range(base: str) -> QueryRange:
    def query(promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode(
            {"query": promql, "start": start, "end": end, "step": step}
        )
        with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as r:
            reply = json.loads(r.read())
        if reply.get("status") != "success":
            raise RuntimeError(f"{promql}: {reply}")
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    return query


def expand(expr: str) -> str:
    return expr.replace('=~"$instance"', '=~".*"').replace('=~"$job"', '=~".*"')


def legend(fmt: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return text.strip() or json.dumps(labels)


def render(
    query: QueryRange, out: Path, start: float, end: float, step: float,
    dashboard: Path = DASHBOARD,
) -> int:
    """Draw every panel; returns how many panels had data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dash = json.loads(dashboard.read_text())
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) // 7
    fig = plt.figure(figsize=(18, 3.0 * rows + 0.8))
    grid = fig.add_gridspec(rows, 24, hspace=0.75, wspace=1.2)
    with_data = 0
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(
            grid[pos["y"] // 7 : (pos["y"] + pos["h"]) // 7, pos["x"] : pos["x"] + pos["w"]]
        )
        ax.set_title(panel["title"], fontsize=10, loc="left")
        drawn = 0
        for target in panel["targets"]:
            for series in query(expand(target["expr"]), start, end, step):
                pts = [(float(t), float(v)) for t, v in series["values"]]
                pts = [(t, v) for t, v in pts if not math.isnan(v)]
                if not pts:
                    continue
                xs = [datetime.fromtimestamp(t) for t, _ in pts]
                ax.plot(xs, [v for _, v in pts], linewidth=1.2,
                        label=legend(target.get("legendFormat", ""), series["metric"])[:40])
                drawn += 1
        if drawn:
            with_data += 1
            ax.legend(fontsize=6, loc="upper left", frameon=False, ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.tick_params(labelsize=7)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if unit and unit != "short":
            ax.set_ylabel(unit, fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{dash['title']} (docs/grafana-dashboard.json), rendered from Prometheus data with "
        "matplotlib, not Grafana",
        fontsize=12,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return with_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "grafana-dashboard.png")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--step", type=float, default=5.0)
    args = parser.parse_args()
    end = time.time()
    n = render(http_query_range(args.prometheus), args.out, end - args.minutes * 60, end,
               args.step)
    print(f"{args.out}: {n} panel(s) with data")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
