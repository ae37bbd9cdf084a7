"""The results as a Markdown table, and the machine they were taken on."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any


def table(result: dict[str, Any]) -> str:
    lines = [
        "| part | metric | p50 | p90 | p99 / max | n | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    path = result.get("path")
    if path:
        for kind, label in (("vip", "VIP:port"), ("direct", "task IP directly")):
            s = path[f"{kind}_us"]
            lines.append(
                f"| 1 | connect + first byte, {label} | {s['p50']:.0f} µs | {s['p90']:.0f} µs "
                f"| {s['p99']:.0f} µs (p99) | {s['n']} | failures {path['failures'][kind]}, "
                f"over 0.5 s {path['slow_over_500ms'][kind]} |"
            )
        lines.append(
            f"| 1 | ratio VIP / direct | {path['ratio_p50']:.2f} | {path['ratio_p90']:.2f} | | | "
            f"VIP spread over backends {path['vip_backend_spread']} |"
        )
    delay = result.get("delay")
    if delay:
        for mode, label in (("poll", "no nudge (1 s poll)"), ("nudge", "nudge()")):
            n = delay["sandboxes"]
            for field, what in (
                ("programmed_ms", f"record written -> program() returned in all {n}"),
                ("read_ms", f"record written -> read() shows it in all {n}"),
                ("until_first_program_ms", "… of which: written -> first program() began"),
                ("programming_ms", "… of which: first program() began -> last returned"),
            ):
                s = delay[mode][field]
                lines.append(
                    f"| 2 | {label}: {what} "
                    f"| {s['p50']:.0f} ms | {s['p90']:.0f} ms | {s['max']:.0f} ms (max) "
                    f"| {s['n']} | |"
                )
        s = delay["read_per_sandbox_ms"]
        lines.append(
            f"| 2 | one read() of a sandbox (before it is programmed) | {s['p50']:.1f} ms | | | | |"
        )
    scale = result.get("scale")
    if scale:
        n, m = scale["services"], scale["sandboxes"]
        lines.append(
            f"| 3 | {n} services x {m} sandboxes: first sync() | {scale['first_pass_ms']:.0f} ms "
            f"| | | 1 | {scale['first_pass_per_sandbox_ms']:.0f} ms per sandbox |"
        )
        for key, what in (
            ("one_backend_changed_ms", "sync() after one backend changed"),
            ("nothing_changed_ms", "sync() with nothing changed"),
        ):
            s = scale[key]
            lines.append(
                f"| 3 | {what} | {s['p50']:.1f} ms | {s['p90']:.1f} ms | {s['max']:.1f} ms (max) "
                f"| {s['n']} | |"
            )
        rss = scale["rss_kib"]
        lines.append(
            f"| 3 | VmRSS before -> after | {rss['before'] / 1024:.1f} MiB | "
            f"{rss['after'] / 1024:.1f} MiB | +{rss['growth'] / 1024:.1f} MiB | | |"
        )
        lines.append(
            f"| 3 | kernel objects per sandbox | {scale['ipvs_services_per_sandbox']} services "
            f"| {scale['ipvs_destinations_per_sandbox']} destinations | | {m} "
            f"| as wanted: {scale['every_sandbox_as_wanted']} |"
        )
        for name, s in scale["one_sandbox_ms"].items():
            lines.append(
                f"| 3 | one sandbox with {n} services: {name.replace('_', ' ')} "
                f"| {s['p50']:.1f} ms | | {s['max']:.1f} ms (max) | {s['n']} | |"
            )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }
