"""Finding and removing what a lab left behind, by name alone: cgroups, processes, files.

``Lab.down`` and ``Lab.leftovers`` use these, so they work without a state file and
after a crash.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from testbed.cgroups import CgroupLayout, find_cgroups, hierarchies, pid_cgroups, rmdir_tree
from testbed.proc import BedError, pid_alive

STATE_FILE = "lab.json"
_OWN_FILES = frozenset({STATE_FILE, "bin", "client", "etcd", "busybox.tar"})


def own_files(workdir: Path) -> list[Path]:
    """What the lab made in its workdir, bar logs/."""
    if not workdir.is_dir():
        return []
    return sorted(p for p in workdir.iterdir()
                  if p.name in _OWN_FILES or re.fullmatch(r"node\d+", p.name))


def remove_cgroups(layout: CgroupLayout, pattern: re.Pattern[str], plugin_ids: set[str],
                   deadline: float) -> None:
    """In every hierarchy: ours by name, the plugins' by id wherever they are."""
    for hierarchy in layout.hierarchies:
        if not hierarchy.is_dir():
            continue
        for cg in find_cgroups(hierarchy, plugin_ids):
            rmdir_tree(cg, deadline)
        for entry in hierarchy.iterdir():
            if entry.is_dir() and pattern.match(entry.name):
                rmdir_tree(entry, deadline)


def remove_own_files(workdir: Path) -> None:
    """The files the lab made (never anything else in the workdir), except logs. A plugin's
    rootfs is thousands of files per node: rm them all at once."""
    if not workdir.is_dir():
        return
    entries = [str(e) for e in own_files(workdir)]
    if entries:
        rms = [subprocess.Popen(["rm", "-rf", "--one-file-system", e]) for e in entries]
        if any(rm.wait() != 0 for rm in rms):
            raise BedError(f"could not delete everything in {workdir}")


def left_cgroups(pattern: re.Pattern[str], plugin_ids: Iterable[str]) -> list[str]:
    """Cgroups named like the lab's, and the plugins' (not named after the lab)."""
    plugin_ids = set(plugin_ids)
    cgroups = []
    for hierarchy in hierarchies():
        with contextlib.suppress(OSError):
            cgroups += [str(e) for e in hierarchy.iterdir() if pattern.match(e.name)]
        cgroups += [str(cg) for cg in find_cgroups(hierarchy, plugin_ids)]
    return sorted(cgroups)


def left_processes(pattern: re.Pattern[str], needles: Iterable[str]) -> list[str]:
    """Live processes in a cgroup of the lab, or whose command line holds one of ``needles``."""
    needles = list(needles)
    procs = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if not pid_alive(int(entry.name)):
            continue
        with contextlib.suppress(OSError):
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            in_lab_cgroup = any(pattern.match(part) for path in pid_cgroups(int(entry.name))
                                for part in path.split("/"))
            if in_lab_cgroup or any(needle in cmd for needle in needles):
                procs.append(f"{entry.name}: {cmd.strip()}")
    return procs
