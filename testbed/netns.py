"""Network namespaces bound at a path: a pyroute2 handle in one, a link by name, a tool run in
one (the beds inspect with ip, ping, tcpdump; the product never shells out)."""

from __future__ import annotations

import os
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


def new_netns(path: Path) -> Path:
    """A namespace bound at ``path`` with ``lo`` up (a sandbox, as Docker makes one)."""
    nsfs.create(path)
    try:
        with ipr_in(path) as ipr:
            ipr.link("set", index=link(ipr, "lo")["index"], state="up")
    except BaseException:
        nsfs.remove(path)
        raise
    return path


def plug(switch: Path, bridge: str, path: Path, port: str, address: str, prefixlen: int) -> None:
    """Wire the namespace at ``path`` to ``bridge`` in ``switch``: a veth pair, ``eth0`` inside
    with ``address`` and up, ``port`` on the bridge."""
    fd = nsfs.open_fd(path)
    try:
        with ipr_in(switch) as ipr:
            ipr.link("add", ifname=port, kind="veth", peer="eth0")
            ipr.link("set", index=link(ipr, "eth0")["index"], net_ns_fd=fd)
            index = link(ipr, port)["index"]
            ipr.link("set", index=index, master=link(ipr, bridge)["index"], state="up")
    finally:
        os.close(fd)
    with ipr_in(path) as ipr:
        index = link(ipr, "eth0")["index"]
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")


def nsrun(path: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool in the namespace at ``path``; its result, whatever the exit status."""
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=timeout
    )
