"""The scratch directory's namespaces: every one a part makes, removed at the end."""

from __future__ import annotations

import contextlib
from pathlib import Path

from driver.kernel import nsfs
from testbed.netns import new_netns


class Scratch:
    """Every namespace made here, removed by ``close()`` whatever happened."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Path] = []

    def netns(self, name: str) -> Path:
        path = new_netns(self.root / name)
        self.made.append(path)
        return path

    def close(self) -> None:
        for path in reversed(self.made):
            with contextlib.suppress(OSError):
                nsfs.remove(path)
        self.made.clear()
