"""driver.kernel.nsfs: sockets born in a namespace, and the caller's thread left where it was."""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path

import pytest

from driver.kernel import nsfs

from .conftest import require_root

pytestmark = pytest.mark.kernel


def own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_socket_in_makes_the_socket_there_and_leaves_the_thread_home(tmp_path: Path) -> None:
    require_root()
    path = tmp_path / "ns"
    nsfs.create(path)
    try:
        home = own_netns()
        there = f"net:[{os.stat(path).st_ino}]"
        assert there != home
        sock = nsfs.socket_in(path, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            assert own_netns() == home
            # The new namespace's loopback is down: a send there fails, one from home would not.
            with pytest.raises(OSError) as err:
                sock.sendto(b"x", ("127.0.0.1", 9))
            assert err.value.errno == errno.ENETUNREACH
        # From other threads at once: each comes back to its own namespace.
        seen: list[str] = []

        def many() -> None:
            for _ in range(50):
                nsfs.socket_in(path).close()
            seen.append(own_netns())

        threads = [threading.Thread(target=many) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert seen == [home] * 4
    finally:
        nsfs.remove(path)


def test_socket_in_a_missing_namespace_raises_and_stays_home(tmp_path: Path) -> None:
    require_root()
    home = own_netns()
    with pytest.raises(OSError):
        nsfs.socket_in(tmp_path / "nothing")
    assert own_netns() == home
