"""Network namespaces bound at a path: a pyroute2 handle in one, a link by name, a tool run in
one (the beds inspect with ip, ping, tcpdump; the product never shells out)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from driver.kernel import nsfs


@contextmanager
def ipr_in(path: Path) -> Iterator[Any]:
    """A pyroute2 handle on the namespace at ``path`` (closed on exit)."""
    sock = nsfs.socket_in(path)
    with IPRoute(fileno=sock.detach(), groups=0) as ipr:
        yield ipr


def link(ipr: Any, name: str) -> Any:
    """The link called ``name``, or None."""
    found = ipr.link_lookup(ifname=name)
    return ipr.link("get", index=found[0])[0] if found else None


def nsrun(path: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool in the namespace at ``path``; its result, whatever the exit status."""
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=timeout
    )
