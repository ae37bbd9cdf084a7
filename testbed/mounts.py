"""What this mount namespace has mounted, read from /proc/self/mountinfo."""

from __future__ import annotations

from pathlib import Path

from testbed.proc import run


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount of this process."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        found.append((left.split(" ")[4].replace("\\040", " "), right.split(" ")[0]))
    return found


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first (the order to unmount them)."""
    prefix = str(directory)
    found = {p for p, _ in _mountinfo() if p == prefix or p.startswith(prefix + "/")}
    return sorted(found, key=lambda p: (-p.count("/"), p))


def nsfs_mounts_under(directory: Path) -> list[str]:
    """Namespaces bound below ``directory``."""
    prefix = str(directory) + "/"
    return [p for p, fstype in _mountinfo() if fstype == "nsfs" and p.startswith(prefix)]


def propagation(path: Path) -> str:
    """Propagation of the mount that holds ``path`` (findmnt's word: shared, private, ...)."""
    out = run(["findmnt", "-n", "-o", "PROPAGATION", "--target", str(path)], timeout=10)
    return out.stdout.split("\n", 1)[0].strip()
