"""A real etcd server on loopback (Debian's etcd-server), in a temp dir: for tests/integration,
tests/fault and bench/scale_sim (which puts its data dir under build/ and passes extra flags)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.proc import stop as stop_process

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    peer_port: int
    client_port: int
    extra_args: tuple[str, ...] = ()

    def stop(self) -> None:
        stop_process(self.process)

    def start(self) -> None:
        """Start again on the same ports and data (after stop(), for outage tests)."""
        self.process = _spawn(self.data_dir, self.client_port, self.peer_port, self.extra_args)
        wait_healthy(self.url, self.process)


def _spawn(
    data_dir: Path, client_port: int, peer_port: int, extra_args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    log = open(data_dir / "etcd.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [
            ETCD,
            "--name",
            "test",
            "--data-dir",
            str(data_dir / "data"),
            "--listen-client-urls",
            f"http://127.0.0.1:{client_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"test=http://127.0.0.1:{peer_port}",
            "--log-level",
            "warn",
            "--logger",
            "zap",
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def wait_healthy(
    url: str,
    proc: subprocess.Popen[bytes],
    what: str = "etcd",
    context: ssl.SSLContext | None = None,
    timeout: float = 20.0,
) -> None:
    """Until ``url``/health says true (etcd's answer; the watch relay gives the same)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1, context=context) as r:
                if b"true" in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} at {url} not healthy after {timeout}s")


@contextmanager
def etcd_server(
    parent: Path | None = None, extra_args: tuple[str, ...] = ()
) -> Iterator[EtcdServer]:
    """A fresh etcd in a new directory under ``parent`` (the system's temp dir if None),
    stopped and removed on the way out, even on failure."""
    if not Path(ETCD).exists():
        raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="swarmnet-etcd-", dir=parent))
    client_port, peer_port = free_port(), free_port()
    proc = _spawn(data_dir, client_port, peer_port, extra_args)
    server = EtcdServer(
        f"http://127.0.0.1:{client_port}", data_dir, proc, peer_port, client_port, extra_args
    )
    try:
        wait_healthy(server.url, proc)
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
