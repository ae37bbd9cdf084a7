"""HTTP over a unix socket: the plugin's own socket, or dockerd's API.

The command line uses it to reach a running plugin; tests and the benchmark use
it for the plugin's and dockerd's sockets too. Standard library only.
"""

from __future__ import annotations

import http.client
import os
import socket
from pathlib import Path

SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes including the NUL


def unix_connect(path: str | Path, timeout: float | None = None) -> socket.socket:
    """A connected stream socket to ``path``, however long the path is (through the
    directory's /proc/self/fd entry when it does not fit in sockaddr_un)."""
    path = Path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            sock.connect(str(path))
            return sock
        dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
        try:
            sock.connect(f"/proc/self/fd/{dirfd}/{path.name}")
        finally:
            os.close(dirfd)
        return sock
    except BaseException:
        sock.close()
        raise


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``http.client`` connection whose transport is the unix socket at ``path``."""

    def __init__(self, path: str | Path, timeout: float | None = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = Path(path)

    def connect(self) -> None:
        self.sock = unix_connect(self.unix_path, self.timeout)
