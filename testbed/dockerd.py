"""One dockerd in a network namespace of its own: the piece every Docker bed is made of.

:class:`testbed.dockerhost.DockerHost` runs one in the host's mount namespace (the e2e suite,
kernel-lab's swarm); :class:`testbed.multihost.Node` runs each in a mount namespace of its own,
N of them on one fabric (the multi-host lab, the benchmarks). What differs is only how the
daemon is launched and torn down; its command line, its client, the wait until it answers and
what it reports about plugins are here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from plugin.unixhttp import UnixHTTPConnection
from testbed.image import busybox_tar, import_busybox
from testbed.proc import NETNS_DIR, BedError, ns_inode, pid_alive, run, tail

DOCKER = "/usr/bin/docker"  # the 20.10 client; /usr/local/bin/docker does not match the daemon
DOCKERD = "/usr/sbin/dockerd"
PLUGIN_NAME = "swarmnet-overlay:latest"


def unix_request(
    path: str | Path,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    """One HTTP request on a unix socket (dockerd's API, a plugin's): (status, body)."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, url, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def unix_post(
    path: str | Path,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    return unix_request(path, "POST", url, body, headers, timeout)


def docker_ping(sock: Path) -> bool:
    """Does the daemon behind ``sock`` answer ``GET /_ping``?"""
    try:
        return unix_request(sock, "GET", "/_ping", timeout=2)[0] == 200
    except OSError:
        return False


class Dockerd:
    """A dockerd with its socket, pidfile and log, inside network namespace ``netns``."""

    def __init__(
        self, netns: str, socket: Path, log: Path, pidfile: Path, cgroup_parent: str
    ) -> None:
        self.netns = netns
        self.socket = socket
        self.log = log
        self.pidfile = pidfile
        self.cgroup_parent = cgroup_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands aimed at this daemon: ``docker`` means this dockerd."""
        env = dict(os.environ)
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER"] = DOCKER
        return env

    def daemon_argv(
        self, data_root: Path, exec_root: Path | str, config_file: Path | str, extra: Sequence[str]
    ) -> list[str]:
        return [
            DOCKERD,
            "--data-root", str(data_root),
            "--exec-root", str(exec_root),
            "-H", f"unix://{self.socket}",
            "--pidfile", str(self.pidfile),
            "--config-file", str(config_file),
            "--cgroup-parent", self.cgroup_parent,
            "--userland-proxy=false",
            *extra,
        ]  # fmt: skip

    # -- commands
    def docker(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``/usr/bin/docker -H <this daemon's socket> ARGS``."""
        return run(
            [DOCKER, "-H", f"unix://{self.socket}", *args],
            check=check,
            timeout=timeout,
            env=self.env,
            input=input,
        )

    def import_busybox(self, tar: Path | None = None) -> None:
        """The busybox image, from ``tar`` (made next to the socket when not given)."""
        import_busybox(self.docker, tar or busybox_tar(self.socket.parent / "busybox.tar"))

    # -- state
    def ping(self) -> bool:
        return docker_ping(self.socket)

    def dockerd_pid(self) -> int | None:
        """The daemon's pid, from its pidfile, if it runs in our namespace."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
            if pid_alive(pid) and ns_inode(f"/proc/{pid}/ns/net") == ns_inode(
                NETNS_DIR / self.netns
            ):
                return pid
        return None

    def is_running(self) -> bool:
        return self.dockerd_pid() is not None and self.ping()

    def tail(self, lines: int = 30) -> str:
        return tail(self.log, lines)

    def wait_ready(self, timeout: float) -> None:
        """Until the daemon answers; BedError with its log when it exits or stays silent."""
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self._proc is not None and self._proc.poll() is not None:
                raise BedError(
                    f"dockerd on {self.netns} exited with {self._proc.returncode}; "
                    f"log {self.log}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise BedError(
                    f"dockerd on {self.netns} not answering after {timeout:g}s; "
                    f"log {self.log}:\n{self.tail()}"
                )
            time.sleep(0.1)

    # -- plugins
    def plugin_id(self, name: str = PLUGIN_NAME) -> str:
        return self.docker("plugin", "inspect", "-f", "{{.Id}}", name).stdout.strip()

    def plugin_enabled(self, name: str = PLUGIN_NAME) -> bool:
        out = self.docker("plugin", "inspect", "-f", "{{.Enabled}}", name, check=False)
        return out.stdout.strip() == "true"

    def remove_plugin(self, name: str = PLUGIN_NAME) -> None:
        """Disable and remove ``name`` if it is installed."""
        if self.docker("plugin", "inspect", name, check=False).returncode != 0:
            return
        self.docker("plugin", "disable", "-f", name, check=False, timeout=60)
        self.docker("plugin", "rm", "-f", name, timeout=60)
