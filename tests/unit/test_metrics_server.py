"""Issue 15: /metrics is served by gunicorn's worker, never by the arbiter, and a worker
that replaces a killed one listens again (a stand-in app; no root)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from plugin.metrics.http import MetricsServer
from plugin.unixhttp import UnixHTTPConnection

SERVER = """
import os, sys
from pathlib import Path
from prometheus_client import CollectorRegistry, Gauge
from plugin import server
from plugin.metrics.http import MetricsServer

sock, port = sys.argv[1], int(sys.argv[2])

def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]

def load():
    registry = CollectorRegistry()
    Gauge("stand_in_worker_pid", "pid", registry=registry).set(os.getpid())
    exporter = MetricsServer(registry, "127.0.0.1", port)
    exporter.start()
    return server.Loaded(app, exporter.close)

sys.exit(server.serve(load, Path(sock), grace=1, close_grace=1))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return str(r.read().decode())


def scraped_pid(port: int) -> int | None:
    try:
        text = scrape(port)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("stand_in_worker_pid "):
            return int(float(line.split()[1]))
    return None


def wait_for_pid(port: int, not_pid: int | None = None, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = scraped_pid(port)
        if pid is not None and pid != not_pid:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker other than {not_pid} served :{port} within {timeout} s")


def listening_inodes(port: int) -> set[str]:
    """Inodes of sockets listening on the TCP port (state 0A), from /proc/net/tcp."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            out.add(fields[9])
    return out


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


@pytest.fixture
def plugin_like(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    sock, port = tmp_path / "p.sock", free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(sock), str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    yield proc, sock, port
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def worker_pid(sock: Path) -> int:
    conn = UnixHTTPConnection(sock, timeout=30)
    try:
        conn.request("POST", "/", body=b"{}", headers={"Content-Length": "2"})
        return int(conn.getresponse().read())
    finally:
        conn.close()


def test_the_worker_serves_metrics_and_its_replacement_listens_again(
    plugin_like: tuple[subprocess.Popen[str], Path, int],
) -> None:
    proc, sock, port = plugin_like
    first = wait_for_pid(port)
    assert first != proc.pid  # the worker answers, not the arbiter
    assert worker_pid(sock) == first
    listening = listening_inodes(port)
    assert listening and listening <= socket_inodes(first)
    assert not listening & socket_inodes(proc.pid)  # the arbiter never holds it
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    second = wait_for_pid(port, not_pid=first)
    print(f"kill -9 to the next scrape: {time.monotonic() - killed:.2f} s")
    assert second != proc.pid
    assert not listening_inodes(port) & socket_inodes(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert not listening_inodes(port)  # the stop closed it


def test_a_busy_port_is_retried_until_it_is_free() -> None:
    port = free_port()
    registry = CollectorRegistry()
    Gauge("stand_in", "x", registry=registry).set(7)
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    server = MetricsServer(registry, "127.0.0.1", port)
    server.start()
    try:
        time.sleep(0.7)
        assert not server.bound.is_set()
        holder.close()
        assert server.bound.wait(5)
        assert "stand_in 7.0" in scrape(port)
    finally:
        server.close()
        holder.close()
    with socket.socket() as again:  # closed: the port can be bound again
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_close_before_the_bind_ends_the_retries() -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        server = MetricsServer(CollectorRegistry(), "127.0.0.1", port)
        server.start()
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 3
        assert not server.bound.is_set()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6 or not Path("/proc/net/if_inet6").exists():
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    server = MetricsServer(CollectorRegistry(), "::1", port)
    server.start()
    try:
        assert server.bound.wait(5)
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=2) as r:
            assert r.status == 200
    finally:
        server.close()
