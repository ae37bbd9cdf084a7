"""plugin.server: gunicorn (arbiter and one gthread worker) on a unix socket, in processes
of its own, as dockerd talks to it.

A stand-in WSGI app (no kernel, no root); tests/kernel/test_serve.py runs the real one."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin.unixhttp import UnixHTTPConnection

# argv: socket path, "access" or "quiet", grace seconds, seconds the load takes, a directory
# for the worker's marks. /slow?S sleeps S seconds and replies with when it started and
# ended; every other reply is the path. The load imports Flask, as the real one does; the
# arbiter says at the end whether it ever held Flask.
SERVER = """
import logging, os, sys, time, json
from pathlib import Path
from plugin import server

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s: %(message)s")
sock, access, grace, delay, marks = sys.argv[1:]
marks = Path(marks)

def mark(text):
    with open(marks / "log", "a") as f:
        f.write(f"{text} {os.getpid()}\\n")

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        started = time.time()
        time.sleep(float(environ["QUERY_STRING"]))
        body = json.dumps([started, time.time()]).encode()
    elif environ["PATH_INFO"] == "/pid":
        body = str(os.getpid()).encode()
    else:
        body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]

def load():
    import flask  # noqa: F401
    mark("loading")
    if delay == "gate":  # until the test says go: no race with a slow machine
        deadline = time.monotonic() + 60
        while not (marks / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        time.sleep(float(delay))
    mark("loaded")
    return server.Loaded(app, lambda: mark("closed"))

status = server.serve(
    load, Path(sock), access=access == "access", grace=int(grace), close_grace=2
)
print(json.dumps({"status": status, "flask": "flask" in sys.modules}), flush=True)
"""


def post(conn: UnixHTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("POST", path, body=b"{}", headers={"Content-Length": "2"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def call(sock: Path, path: str) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(sock, timeout=30)
    try:
        return post(conn, path)
    finally:
        conn.close()


class Server:
    def __init__(
        self, tmp: Path, access: bool = False, grace: int = 3, delay: float | str = 0.0
    ) -> None:
        self.socket = tmp / "run" / "p.sock"
        self.marks = tmp / "marks"
        self.marks.mkdir(exist_ok=True)
        (self.marks / "log").write_text("")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVER,
                str(self.socket),
                "access" if access else "quiet",
                str(grace),
                str(delay),
                str(self.marks),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_up(self) -> Server:
        deadline = time.monotonic() + 30
        while not self._answers():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            return call(self.socket, "/up")[0] == 200
        except OSError:
            return False

    def marked(self) -> list[str]:
        return (self.marks / "log").read_text().split()[::2]

    def worker(self) -> int:
        return int(call(self.socket, "/pid")[1])

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[float, dict[str, object], str]:
        """Signal the arbiter; (seconds until exit, what it printed, stderr)."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=20)
        took = time.monotonic() - started
        return took, json.loads(out) if out.strip() else {}, err


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path).wait_up()
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.communicate()


def test_an_arbiter_and_one_worker_and_the_arbiter_never_holds_the_app(server: Server) -> None:
    worker = server.worker()
    assert worker != server.proc.pid
    parent = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent == server.proc.pid
    assert Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split() == [
        str(worker)
    ]
    # What ps shows (setproctitle): gunicorn's own names.
    assert (
        b"gunicorn: master [swarmnet-overlay]"
        in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    )
    assert b"gunicorn: worker [swarmnet-overlay]" in Path(f"/proc/{worker}/cmdline").read_bytes()
    _, printed, _ = server.stop()
    assert printed == {"status": 0, "flask": False}


def test_socket_is_for_root_only_and_removed_after_sigterm_with_an_idle_connection_open(
    server: Server,
) -> None:
    mode = os.stat(server.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) & 0o077 == 0
    # dockerd keeps its connection open between calls: that must not delay the exit.
    idle = UnixHTTPConnection(server.socket)
    assert post(idle, "/one") == (200, b"/one")
    took, printed, _ = server.stop()
    idle.close()
    print(f"SIGTERM to exit, idle: {took:.3f} s")
    assert printed["status"] == 0
    assert server.proc.returncode == 0
    assert took < 1.0
    assert not server.socket.exists()
    assert server.marked() == ["loading", "loaded", "closed"]


def test_a_connection_that_never_sent_a_request_does_not_delay_the_exit(server: Server) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(server.socket))
    time.sleep(6)  # gthread parks it in its poller after 5 s without a request
    took, printed, _ = server.stop()
    silent.close()
    assert printed["status"] == 0
    assert took < 1.5  # not the grace time (3 s)


def test_connections_are_kept_alive(server: Server) -> None:
    conn = UnixHTTPConnection(server.socket)
    try:
        assert post(conn, "/one") == (200, b"/one")
        first = conn.sock
        assert post(conn, "/two") == (200, b"/two")
        assert conn.sock is first is not None
    finally:
        conn.close()


def _sixteen_slow_calls(sock: Path) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    barrier = threading.Barrier(16)

    def one() -> None:
        conn = UnixHTTPConnection(sock, timeout=30)
        try:
            barrier.wait()
            status, body = post(conn, "/slow?1")
            assert status == 200
            started, ended = json.loads(body)
            spans.append((started, ended))
        finally:
            conn.close()

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(spans) == 16
    return spans


def test_sixteen_calls_overlap_in_time_even_with_idle_connections_open(server: Server) -> None:
    # More idle kept-alive connections than request threads, as dockerd may hold.
    idle = [UnixHTTPConnection(server.socket) for _ in range(24)]
    try:
        for conn in idle:
            assert post(conn, "/idle")[0] == 200
        spans = _sixteen_slow_calls(server.socket)
        # Every call had started (server side) before the first one ended: all 16 ran at once.
        assert max(s for s, _ in spans) < min(e for _, e in spans)
        for conn in idle:  # and the idle ones still work
            assert post(conn, "/again") == (200, b"/again")
    finally:
        for conn in idle:
            conn.close()


def test_a_call_made_while_the_worker_loads_waits_and_is_answered(tmp_path: Path) -> None:
    srv = Server(tmp_path, delay="gate")
    try:
        deadline = time.monotonic() + 30
        while not srv.socket.exists():
            assert srv.proc.poll() is None, srv.proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # 0600 from the moment the socket exists, before any call is answered.
        assert stat.S_IMODE(os.stat(srv.socket).st_mode) & 0o077 == 0
        conn = UnixHTTPConnection(srv.socket, timeout=30)
        conn.connect()  # not refused: the arbiter listens before the worker is built
        conn.request("POST", "/early", body=b"{}", headers={"Content-Length": "2"})
        assert "loaded" not in srv.marked()  # the worker is held until the go below
        (srv.marks / "go").write_text("")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"/early")
        assert srv.marked()[:2] == ["loading", "loaded"]
        conn.close()
    finally:
        srv.stop()


def test_a_killed_worker_is_replaced_and_the_new_one_loads_again(server: Server) -> None:
    first = server.worker()
    conn = UnixHTTPConnection(server.socket, timeout=30)
    assert post(conn, "/before")[0] == 200
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    # A call right away is not refused: it waits for the new worker.
    assert call(server.socket, "/after") == (200, b"/after")
    print(f"kill -9 to the next answer: {time.monotonic() - killed:.3f} s")
    assert time.monotonic() - killed < 5
    assert server.worker() != first
    assert server.marked() == ["loading", "loaded", "loading", "loaded"]
    # The connection the dead worker held fails once; dockerd's retry gets a new one.
    with pytest.raises((OSError, ConnectionError)):
        post(conn, "/stale")
    conn.close()
    _, printed, _ = server.stop()
    assert printed["status"] == 0


def test_a_request_in_flight_finishes_and_gets_its_reply_after_sigterm(server: Server) -> None:
    reply: list[tuple[int, bytes]] = []
    conn = UnixHTTPConnection(server.socket)

    def slow() -> None:
        reply.append(post(conn, "/slow?1"))

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    took, printed, _ = server.stop()
    t.join(5)
    conn.close()
    assert [status for status, _ in reply] == [200]
    assert printed["status"] == 0
    # The call ends 0.7 s after the signal; its connection is not kept the 2 s gunicorn
    # gives kept-alive connections of a stopping worker.
    assert 0.5 < took < 2.0
    # The services close after the last call, not while it runs.
    assert server.marked() == ["loading", "loaded", "closed"]


def test_access_log_only_when_asked(tmp_path: Path) -> None:
    for access in (True, False):
        srv = Server(tmp_path, access=access).wait_up()
        _, _, err = srv.stop()
        assert ("swarmnet.access: POST /up 200" in err) is access, err


@pytest.mark.parametrize("quick", [False, True])
def test_a_stuck_request_holds_the_exit_for_the_grace_time_or_until_sigint(
    tmp_path: Path, quick: bool
) -> None:
    srv = Server(tmp_path, grace=2).wait_up()
    conn = UnixHTTPConnection(srv.socket)
    conn.request("POST", "/slow?30", body=b"{}", headers={"Content-Length": "2"})
    time.sleep(0.3)
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    if quick:  # gunicorn's signals: SIGINT (or SIGQUIT) during a graceful stop ends it now
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGINT)
    out, _ = srv.proc.communicate(timeout=20)
    took = time.monotonic() - started
    conn.close()
    assert json.loads(out)["status"] == 0
    if quick:
        assert took < 1.5
    else:
        # The call's grace time (2 s here), then the services close and the worker exits:
        # long before the arbiter's own limit (grace + close grace) would kill it.
        assert 1.8 < took < 3.5
        assert srv.marked() == ["loading", "loaded", "closed"]


def test_a_bad_pool_stops_the_plugin_before_the_arbiter_starts(tmp_path: Path) -> None:
    sock = tmp_path / "p.sock"
    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "serve", "--socket", str(sock), "--state-dir", state],
        env={**os.environ, "DEFAULT_ADDR_POOLS": "10.0.0.0/30"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "bad setting: DEFAULT_ADDR_POOLS" in done.stderr
    assert "gunicorn" not in done.stderr
    assert not sock.exists()
