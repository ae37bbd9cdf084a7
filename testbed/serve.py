"""`swarmnet serve` as a process: the real server (gunicorn's arbiter and one worker) on a
unix socket, in a scratch network namespace standing in for the host. Used by
tests/kernel/test_serve.py and by the local plugin-call bench (bench/calls_local.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plugin.unixhttp import UnixHTTPConnection


def call(sock: Path, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    conn = UnixHTTPConnection(sock, timeout=30)
    try:
        # Like dockerd: POST, no Content-Type.
        conn.request("POST", path, body=data, headers={"Content-Length": str(len(data))})
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, json.loads(text) if text else None
    finally:
        conn.close()


class Server:
    def __init__(self, netns: str, tmp: Path) -> None:
        self.netns = netns
        self.socket = tmp / "p.sock"
        self.state = tmp / "state"
        self.run = tmp / "run"
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, log_level: str = "info", **settings: str) -> None:
        env = {**os.environ, "VNI_RANGE": "300-340", "LOG_LEVEL": log_level, **settings}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    # nsenter, not `ip netns exec`: that one also makes a private mount
                    # namespace, which would hide the namespaces the server bind-mounts.
                    "nsenter",
                    f"--net=/run/netns/{self.netns}",
                    sys.executable,
                    "-m",
                    "plugin.cli",
                    "serve",
                    "--socket",
                    str(self.socket),
                    "--state-dir",
                    str(self.state),
                    "--run-dir",
                    str(self.run),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if self.socket.exists():
                try:
                    if call(self.socket, "/Plugin.Activate")[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError("server did not come up:\n" + self.log.read_text())

    def stop(self) -> float:
        """SIGTERM with an idle kept-alive connection open, as dockerd holds one."""
        assert self.proc is not None
        idle = UnixHTTPConnection(self.socket, timeout=30)
        idle.request("POST", "/Plugin.Activate", body=b"", headers={"Content-Length": "0"})
        assert idle.getresponse().read()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0, self.log.read_text()
        took = time.monotonic() - started
        idle.close()
        print(f"SIGTERM to exit: {took:.3f} s")
        return took

    def worker(self) -> int:
        """The pid of gunicorn's one worker (the arbiter's only child)."""
        assert self.proc is not None
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def log_lines(self, pattern: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if re.search(pattern, line)]


@contextmanager
def scratch_server(tmp: Path) -> Iterator[Server]:
    """A Server in a fresh namespace (not started); everything it made is removed at the end."""
    netns = f"snserve-{uuid.uuid4().hex[:6]}"
    # Test-bed setup only (the product never shells out to ip).
    subprocess.run(["ip", "netns", "add", netns], check=True)
    srv = Server(netns, tmp)
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(10)
        netns_dir = srv.run / "netns"
        if netns_dir.is_dir():
            for entry in netns_dir.iterdir():
                subprocess.run(["umount", "-l", str(entry)], check=False, capture_output=True)
                entry.unlink(missing_ok=True)
        subprocess.run(["ip", "netns", "del", netns], check=False)
