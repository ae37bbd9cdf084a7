"""A real watch relay (``swarmnet relay``) in its own process, in front of a test etcd: for
tests/integration and bench/scale_sim."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.etcdserver import _wait_healthy, free_port
from testbed.proc import stop as stop_process


@dataclass
class RelayServer:
    url: str
    port: int
    etcd_url: str
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)

    def start(self) -> None:
        """Start again on the same port (after stop(), for failover tests)."""
        self.process = _spawn(self.etcd_url, self.port, self.log)
        _wait_healthy(self.url, self.process)


def _spawn(etcd_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ETCD_ENDPOINTS": etcd_url, "LOG_LEVEL": "info"}
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "plugin.cli", "relay", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parent.parent,
    )


@contextmanager
def relay_server(etcd_url: str, log_dir: Path | None = None) -> Iterator[RelayServer]:
    """A relay on a free loopback port, healthy (it has listed etcd) when yielded; stopped on
    the way out, even on failure."""
    log = Path(tempfile.mkstemp(prefix="swarmnet-relay-", suffix=".log", dir=log_dir)[1])
    port = free_port()
    proc = _spawn(etcd_url, port, log)
    relay = RelayServer(f"http://127.0.0.1:{port}", port, etcd_url, log, proc)
    try:
        _wait_healthy(relay.url, proc)
        yield relay
    finally:
        relay.stop()
        if log_dir is None:
            log.unlink(missing_ok=True)
