"""How a lab's objects are named, and how labs are found again from those names alone.

Everything a lab creates carries the ``snlab-`` prefix (and its name, if it has one),
so ``down`` and the CLI find it without any state file.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from testbed.proc import NETNS_DIR, netns_pids

PREFIX = "snlab-"


def ns_prefix(name: str) -> str:
    """Prefix of every namespace and cgroup of the lab called ``name`` ("" is the default lab)."""
    return f"{PREFIX}{name}-" if name else PREFIX


def lab_object_re(name: str) -> re.Pattern[str]:
    """Matches the netns/cgroup names that belong to lab ``name`` and to no other lab."""
    return re.compile(rf"^{re.escape(ns_prefix(name))}(?:fabric|node\d+)$")


def existing_netns(name: str) -> list[str]:
    """The network namespaces of lab ``name`` that exist now."""
    pattern = lab_object_re(name)
    with contextlib.suppress(FileNotFoundError):
        return sorted(n for n in os.listdir(NETNS_DIR) if pattern.match(n))
    return []


def discover_workdir(name: str) -> Path | None:
    """The workdir of lab ``name``, read from a running dockerd's --data-root, if any runs."""
    for netns_name in sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []:
        if not lab_object_re(name).match(netns_name) or "node" not in netns_name:
            continue
        for pid in netns_pids(netns_name):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"--data-root" in argv[:-1]:
                    data_root = Path(os.fsdecode(argv[argv.index(b"--data-root") + 1]))
                    return data_root.parent.parent
    return None


def iter_labs() -> Iterator[str]:
    """Names of labs that have namespaces on this machine ("" is the default lab)."""
    seen = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(NETNS_DIR)):
            m = re.fullmatch(rf"{re.escape(PREFIX)}(?:([a-z0-9]+)-)?(?:fabric|node\d+)", entry)
            if m and (m.group(1) or "") not in seen:
                seen.add(m.group(1) or "")
                yield m.group(1) or ""
