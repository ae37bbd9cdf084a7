"""Netlink handles and locks, per network namespace: what every family of NetlinkKernel uses."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from pyroute2 import IPRoute

from driver import names
from driver.kernel import nsfs
from driver.kernel.netlink.links import Handle, errors
from driver.kernel.netlink.reaper import Reaper
from driver.kernel.port import KernelError
from driver.keylocks import KeyedLocks

DEFAULT_NETNS_DIR = Path("/run/swarmnet/netns")


class Handles:
    """Where our namespaces are, how to open a handle in one, and the per-network locks.

    ``host_netns`` names the host namespace (tests); None = the caller's. Every
    handle is opened and closed per call: a pyroute2 0.9 handle keeps an event
    loop per thread, so one shared by request threads breaks.
    """

    _reaper: Reaper  # made by NetlinkKernel, which has the reaping step

    def __init__(self, netns_dir: Path = DEFAULT_NETNS_DIR, host_netns: Path | None = None) -> None:
        self._netns_dir = netns_dir
        self._host_netns = host_netns
        self._locks = KeyedLocks()
        self._staging_lock = threading.Lock()
        # Per network (short ID), used and changed only under that network's lock.
        self._bridges: dict[str, int] = {}  # the bridge's ifindex in the namespace

    def _lock(self, network_id: str) -> AbstractContextManager[None]:
        return self._locks.hold(names.short(network_id))

    def _path(self, network_id: str) -> Path:
        return self._netns_dir / names.netns(network_id)

    @contextmanager
    def _host(self) -> Iterator[Handle]:
        with errors("open a netlink socket in the host namespace"):
            if self._host_netns is None:
                ipr = IPRoute(groups=0)
            else:
                ipr = ipr_on(nsfs.socket_in(self._host_netns))
        with ipr:
            yield ipr

    @contextmanager
    def _netns(self, network_id: str) -> Iterator[Handle]:
        path = self._existing(network_id)
        with errors(f"open namespace {path}"):
            ipr = self._open(path)
        with ipr:
            yield ipr

    @contextmanager
    def _netns_socket(self, network_id: str) -> Iterator[socket.socket]:
        """A plain netlink socket in the network's namespace, for ``onelink`` requests."""
        path = self._existing(network_id)
        with errors(f"open namespace {path}"):
            sock = nsfs.socket_in(path)
        with sock:
            yield sock

    def _existing(self, network_id: str) -> Path:
        """The network's namespace; KernelError if it does not exist. The caller holds its lock."""
        path = self._path(network_id)
        if not nsfs.is_netns(path):
            self._forget(names.short(network_id))
            raise KernelError(f"network {names.short(network_id)}: namespace {path} does not exist")
        return path

    @staticmethod
    def _open(path: Path) -> Handle:
        """A handle in the namespace bound at ``path``; the caller closes it."""
        return ipr_on(nsfs.socket_in(path))

    def _forget(self, short: str) -> None:
        """Drop what is cached about a network. The caller holds its lock."""
        self._bridges.pop(short, None)

    def _host_fd(self) -> int:
        # The calling thread's namespace, as an IPRoute opened here would be in.
        return nsfs.open_fd(self._host_netns or Path("/proc/thread-self/ns/net"))


def ipr_on(sock: socket.socket) -> Handle:
    fd = sock.detach()
    try:
        return IPRoute(fileno=fd, groups=0)
    except BaseException:
        os.close(fd)
        raise

