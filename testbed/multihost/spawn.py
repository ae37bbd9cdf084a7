"""How the lab runs things: daemons in a cgroup of their own, and one step on every node at once."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

T = TypeVar("T")


def spawn(argv: list[str], *, log: Path, cgroup: Path) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session, placed in ``cgroup`` before it execs."""
    cgroup.mkdir(parents=True, exist_ok=True)
    procs = str(cgroup / "cgroup.procs")

    def enter_cgroup() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    env = {"PATH": SYSTEM_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=env, start_new_session=True, preexec_fn=enter_cgroup)


def parallel(fn: Callable[[T], None], items: Iterable[T]) -> None:
    """Run ``fn`` on every item at once; re-raise the first failure (after all finish)."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(fn, n) for n in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
