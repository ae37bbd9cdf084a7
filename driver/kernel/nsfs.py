"""Network namespaces: bound under a directory of our choice, and entered per thread.

``ip netns`` and ``pyroute2.netns`` keep namespaces in /var/run/netns and fork a
child for every operation. We keep ours under a directory given by the caller
(/run/swarmnet/netns in the plugin, a temporary directory in tests) and use threads
instead of forks: ``unshare(CLONE_NEWNET)`` and ``setns`` change only the calling
thread. ``run_in`` runs a body on a throwaway thread inside a namespace (creating
one, IPVS and xfrm work, sysctls); ``socket_in``, on the hot path of every netlink
handle, enters on the calling thread and comes straight back.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str, path: Path | str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", str(path))


class NewNetns:
    """Marker: a fresh namespace, which ends with the thread unless something holds it."""

    def __repr__(self) -> str:
        return "NEW_NETNS"


NEW_NETNS: Final = NewNetns()
# A namespace to enter: bound at a path, an open fd (left open), or a fresh one.
Target = Path | int | NewNetns


def _enter(netns: Target) -> None:
    """Move the calling thread into ``netns``."""
    if isinstance(netns, NewNetns):
        _check(_libc.unshare(CLONE_NEWNET), "unshare", "a new network namespace")
    elif isinstance(netns, int):
        _check(_libc.setns(netns, CLONE_NEWNET), "setns", f"fd {netns}")
    else:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), "setns", netns)
        finally:
            os.close(fd)


def run_in(netns: Target, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a short thread inside ``netns`` and return its result.

    The thread dies afterwards, taking its namespace with it; the caller's
    threads never change namespace. A socket ``fn`` makes keeps the namespace
    it was born in. An error entering the namespace is an OSError.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            _enter(netns)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread below
            error.append(exc)

    thread = threading.Thread(target=run, name="swarmnet-netns", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def is_netns(path: Path) -> bool:
    """True if ``path`` is a bind mount of a network namespace (not merely a file)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except FileNotFoundError:
        return False


def create(path: Path) -> None:
    """Create a new network namespace and bind it at ``path`` (which must not exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def bind() -> None:
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(source, bytes(path), None, MS_BIND, None), "mount", path)

    try:
        run_in(NEW_NETNS, bind)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def remove(path: Path) -> None:
    """Unbind and delete ``path``; the namespace dies when nothing else holds it."""
    if _libc.umount2(bytes(path), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        # EINVAL: not a mount point (a file left half-made); ENOENT: already gone.
        if code not in (errno.EINVAL, errno.ENOENT):
            raise OSError(code, f"umount: {os.strerror(code)}", str(path))
    path.unlink(missing_ok=True)


def open_fd(path: Path) -> int:
    """An fd referring to the namespace, e.g. for IFLA_NET_NS_FD. The caller closes it."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def socket_in(
    path: Path,
    family: int = socket.AF_NETLINK,
    kind: int = socket.SOCK_DGRAM,
    proto: int = 0,
) -> socket.socket:
    """A socket in the namespace at ``path``: a socket keeps the namespace it was born in.

    Made on the calling thread, which enters the namespace and comes straight back, as
    libnetwork's ``WithNetNSPath`` does: a plugin call opens one or two of these, and a
    short thread per socket (``run_in``) cost more than the netlink request itself.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(path)
        try:
            return socket.socket(family, kind, proto)
        finally:
            _return(own)
    finally:
        os.close(own)


def _return(own: int) -> None:
    """Back to the thread's own namespace. A thread left in another one would program the
    wrong namespace from then on: if the kernel refuses (it never should, for a namespace
    we were in a moment ago), the process ends and its supervisor starts a clean one."""
    if _libc.setns(own, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        message = f"swarmnet: cannot return to the thread's namespace: {os.strerror(code)}\n"
        os.write(2, message.encode())
        os._exit(70)
