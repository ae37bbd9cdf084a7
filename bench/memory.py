"""The plugin's memory on every node: RSS (and PSS) summed over the plugin's processes.

The processes are found by cgroup: a managed plugin runs in a cgroup named after its plugin id
(``docker plugin inspect -f {{.Id}}``), which holds its process tree: gunicorn's arbiter and
its one worker (``ps`` names them ``gunicorn: master [...]`` and ``gunicorn: worker [...]``).
RSS counts the pages they share twice, so the RSS sum is the pessimistic figure; PSS splits
shared pages.

Docker's overlay lives inside dockerd; it has no process of its own to weigh."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from bench.common import Context, LabError, Node, Row
from testbed import proc


def plugin_pids(node: Node, plugin_id: str) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if plugin_id in Path(entry.path, "cgroup").read_text():
                pids.append(int(entry.name))
    return sorted(pids)


def usage(node: Node, plugin: str) -> dict[str, Any]:
    plugin_id = node.plugin_id(plugin)
    procs = []
    for pid in plugin_pids(node, plugin_id):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            procs.append({"pid": pid, "cmd": cmd.strip()[:120],
                          "rss_mb": proc.rss_bytes(pid) / 2**20,
                          "pss_mb": (proc.kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss") or 0)
                          / 1024})
    if not procs:
        raise LabError(f"no process of plugin {plugin} ({plugin_id[:12]}) on {node.netns}")
    return {"node": node.index, "plugin_id": plugin_id, "processes": procs,
            "rss_mb": sum(p["rss_mb"] for p in procs), "pss_mb": sum(p["pss_mb"] for p in procs)}


def measure(ctx: Context, when: str) -> list[Row]:
    """``when``: idle, after_scale, after_cleanup (the row keys' suffix)."""
    words = when.replace("_", " ")
    rss = Row(f"rss_{when}", f"plugin RSS {words}, all its processes, per node", "MB",
              docker=None, target="< 80 MB")
    pss = Row(f"pss_{when}", f"plugin PSS {words}, per node", "MB", docker=None)
    nodes = []
    for node in ctx.lab.nodes:
        try:
            u = usage(node, ctx.plugin)
        except LabError as e:
            rss.failures.append(str(e))
            continue
        nodes.append(u)
        rss.ours.append(u["rss_mb"])
        pss.ours.append(u["pss_mb"])
    rss.extra["nodes"] = nodes
    return [rss, pss]
