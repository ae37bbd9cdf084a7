"""The lab's etcd: one member in the fabric namespace, listening on the lab subnet."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from testbed.multihost.names import PREFIX
from testbed.proc import BedError, tail

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
ETCD_CLIENT_PORT = 2379


def etcd_argv(fabric_netns: str, data_dir: Path, url: str) -> list[str]:
    """etcd serving ``url``, run inside the fabric namespace."""
    peer = "http://127.0.0.1:2380"  # the fabric's own loopback: a one-member cluster
    return ["ip", "netns", "exec", fabric_netns, ETCD,
            "--name", f"{PREFIX}etcd", "--data-dir", str(data_dir),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{PREFIX}etcd={peer}", "--initial-cluster-state", "new"]


def wait_healthy(proc: subprocess.Popen[bytes] | None, healthy: Callable[[], bool], log: Path,
                 timeout: float) -> None:
    """Until ``healthy()``; fails at once if ``proc`` (the etcd this process started) exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BedError(f"etcd exited with {proc.returncode}; log {log}:\n{tail(log)}")
        if healthy():
            return
        if time.monotonic() > deadline:
            raise BedError(f"etcd not healthy after {timeout:g}s")
        time.sleep(0.2)
