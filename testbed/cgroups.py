"""Cgroups: where this host mounts them, how a node's mount namespace mirrors them, and how
to find, empty and remove the ones a bed made (a daemon's, or a managed plugin's by its id)."""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from testbed.proc import BedError

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CgroupLayout:
    """How this host mounts cgroups, and how to mirror that inside a node's mount namespace.

    ``ip netns exec`` remounts /sys, which drops the cgroup mounts; dockerd and runc need them.
    """

    version: int  # 1 (legacy or hybrid) or 2 (unified)
    hierarchies: tuple[Path, ...]  # every hierarchy root on the host (v2: just /sys/fs/cgroup)
    tracking: Path  # hierarchy used to find a node's processes by cgroup
    mount_script: str  # shell lines that remount the cgroups at /sys/fs/cgroup inside a node

    @staticmethod
    def detect() -> CgroupLayout:
        fstype = _statfs_type(CGROUP_ROOT)
        mounts = _cgroup_mounts()
        if fstype == "cgroup2fs":
            opts = mounts.get(CGROUP_ROOT, ("cgroup2", "rw"))[1]
            script = f"mount -t cgroup2 -o {shlex.quote(opts)} cgroup2 {CGROUP_ROOT}\n"
            return CgroupLayout(2, (CGROUP_ROOT,), CGROUP_ROOT, script)
        if fstype != "tmpfs":
            raise BedError(f"unknown cgroup layout: {CGROUP_ROOT} is {fstype!r}")
        v1 = {p: o for p, (t, o) in mounts.items() if t == "cgroup" and p.parent == CGROUP_ROOT}
        if not v1:
            raise BedError(f"no cgroup v1 hierarchy is mounted under {CGROUP_ROOT}")
        lines = [f"mount -t tmpfs -o mode=755 snlab_cgroup {CGROUP_ROOT}"]
        for path, opts in sorted(v1.items()):
            lines.append(f"mkdir -p {path}")
            lines.append(f"mount -t cgroup -o {shlex.quote(opts)} cgroup {path}")
        # Co-mounted controllers are reached through symlinks such as cpu -> cpu,cpuacct.
        for entry in sorted(CGROUP_ROOT.iterdir()):
            if entry.is_symlink():
                lines.append(f"ln -s {shlex.quote(os.readlink(entry))} {entry}")
        # The hybrid cgroup2 mount (/sys/fs/cgroup/unified) is deliberately not mirrored: without
        # it runc creates nothing there, so there is one place fewer to clean up.
        tracking = CGROUP_ROOT / "pids" if CGROUP_ROOT / "pids" in v1 else min(v1)
        every = tuple(sorted(p for p, (t, _) in mounts.items() if p.parent == CGROUP_ROOT))
        return CgroupLayout(1, every, tracking, "\n".join(lines) + "\n")


def _statfs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-fc", "%T", str(path)], capture_output=True, text=True)
    return out.stdout.strip()


def _cgroup_mounts() -> dict[Path, tuple[str, str]]:
    """Mount point -> (fstype, super options without rw/ro) for cgroup mounts of this process."""
    found: dict[Path, tuple[str, str]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, superopts = right.split(" ", 2)
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mountpoint = Path(left.split(" ")[4])
        opts = ",".join(o for o in superopts.split(",") if o not in ("rw", "ro")) or "rw"
        found[mountpoint] = (fstype, opts)
    return found


def hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup."""
    found = {p for p in _cgroup_mounts() if p.is_relative_to(CGROUP_ROOT)}
    return sorted(found) or [CGROUP_ROOT]


def cgroup_procs(directory: Path) -> set[int]:
    """Pids in ``directory`` and every cgroup below it."""
    pids: set[int] = set()
    if not directory.is_dir():
        return pids
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def pid_cgroups(pid: int) -> list[str]:
    """The cgroup paths of a process, one per hierarchy."""
    with contextlib.suppress(OSError):
        return [ln.split(":", 2)[2] for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    return []


def find_cgroups(hierarchy: Path, names: Iterable[str], max_depth: int = 6) -> list[Path]:
    """Cgroups named one of ``names`` anywhere in ``hierarchy`` (down to ``max_depth``)."""
    wanted = set(names)
    found: list[Path] = []
    if not wanted:
        return found
    base = len(hierarchy.parts)
    for root, dirs, _files in os.walk(hierarchy):
        here = Path(root)
        if len(here.parts) - base >= max_depth:
            dirs.clear()
        for d in dirs:
            if d in wanted:
                found.append(here / d)
    return found


def rmdir_tree(directory: Path, deadline: float) -> None:
    """Remove a cgroup and its children, deepest first (cgroupfs refuses non-empty dirs)."""
    if not directory.is_dir():
        return
    children = sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for cg in [*children, directory]:
        while True:
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                # EBUSY while the last tasks of a killed cgroup are still being released.
                busy = e.errno in (errno.EBUSY, errno.ENOTEMPTY)
                if not busy or time.monotonic() > deadline:
                    raise BedError(f"cannot remove cgroup {cg}: {e}") from e
                time.sleep(0.05)
