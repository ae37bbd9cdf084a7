"""plugin.server: waitress on a unix socket in its own process, as dockerd talks to it.

A stand-in WSGI app (no kernel, no root); tests/kernel/test_serve.py runs the real one."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin.unixhttp import UnixHTTPConnection

# argv: socket path, "access" or "quiet". /slow?S sleeps S seconds; every reply is the path.
SERVER = """
import logging, sys, time
from pathlib import Path
from plugin import server

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s: %(message)s")

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(environ["QUERY_STRING"]))
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]

with server.listening(Path(sys.argv[1])) as sock:
    print(server.serve(app, sock, access=sys.argv[2] == "access"), flush=True)
"""


def post(conn: UnixHTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("POST", path, body=b"{}", headers={"Content-Length": "2"})
    resp = conn.getresponse()
    return resp.status, resp.read()


class Server:
    def __init__(self, tmp: Path, access: bool = False) -> None:
        self.socket = tmp / "run" / "p.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.socket), "access" if access else "quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not self._answers():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            conn = UnixHTTPConnection(self.socket)
            try:
                return post(conn, "/up")[0] == 200
            finally:
                conn.close()
        except OSError:
            return False

    def stop(self) -> tuple[float, str, str]:
        """SIGTERM; (seconds until exit, stdout, stderr)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=15)
        return time.monotonic() - started, out, err


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.communicate()


def test_socket_is_for_root_only_and_removed_after_sigterm(server: Server) -> None:
    mode = os.stat(server.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) & 0o077 == 0
    took, out, _ = server.stop()
    assert server.proc.returncode == 0
    assert out.strip() == "SIGTERM"
    assert took < 1.0
    assert not server.socket.exists()


def test_connections_are_kept_alive(server: Server) -> None:
    conn = UnixHTTPConnection(server.socket)
    try:
        assert post(conn, "/one") == (200, b"/one")
        first = conn.sock
        assert post(conn, "/two") == (200, b"/two")
        assert conn.sock is first is not None
    finally:
        conn.close()


def test_sixteen_requests_run_at_once(server: Server) -> None:
    replies: list[tuple[int, bytes]] = []

    def one() -> None:
        conn = UnixHTTPConnection(server.socket)
        try:
            replies.append(post(conn, "/slow?0.5"))
        finally:
            conn.close()

    threads = [threading.Thread(target=one) for _ in range(16)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == [(200, b"/slow")] * 16
    assert time.monotonic() - started < 2.5  # one at a time: 8 s


def test_a_request_in_flight_finishes_and_gets_its_reply_after_sigterm(server: Server) -> None:
    reply: list[tuple[int, bytes]] = []
    conn = UnixHTTPConnection(server.socket)

    def slow() -> None:
        reply.append(post(conn, "/slow?1"))

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    took, _, _ = server.stop()
    t.join(5)
    conn.close()
    assert reply == [(200, b"/slow")]
    assert 0.5 < took < 2.5


def test_access_log_only_when_asked(tmp_path: Path) -> None:
    for access in (True, False):
        srv = Server(tmp_path, access=access)
        _, _, err = srv.stop()
        assert ("swarmnet.access: POST /up 200" in err) is access, err


@pytest.mark.parametrize("signals", [1, 2])
def test_a_stuck_request_holds_the_exit_for_the_grace_time_or_until_a_second_signal(
    server: Server, signals: int
) -> None:
    conn = UnixHTTPConnection(server.socket)
    conn.request("POST", "/slow?30", body=b"{}", headers={"Content-Length": "2"})
    time.sleep(0.3)
    started = time.monotonic()
    for _ in range(signals):
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    server.proc.communicate(timeout=15)
    took = time.monotonic() - started
    conn.close()
    if signals == 1:
        assert 2.5 < took < 4.5  # plugin.server.GRACE is 3 s
    else:
        assert took < 1.5
