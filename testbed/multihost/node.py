"""One node of the lab: a network namespace, a mount/UTS context of its own and a dockerd."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from testbed.cgroups import CgroupLayout, cgroup_procs, find_cgroups, pid_cgroups
from testbed.dockerd import Dockerd, unix_post
from testbed.multihost.names import ns_prefix
from testbed.multihost.spawn import SYSTEM_PATH, spawn
from testbed.proc import BedError, kill_until_gone, netns_pids, run

PLUGIN_ID = re.compile(r"^[0-9a-f]{64}$")


class NodeHost(Protocol):
    """What a node needs of its lab (``lab.Lab``)."""

    @property
    def name(self) -> str: ...
    @property
    def workdir(self) -> Path: ...
    @property
    def subnet(self) -> ipaddress.IPv4Network: ...
    @property
    def managers(self) -> int: ...
    @property
    def dockerd_args(self) -> tuple[str, ...]: ...
    @property
    def daemon_config(self) -> Mapping[str, object]: ...
    @property
    def cgroups(self) -> CgroupLayout: ...


class Node(Dockerd):
    """One swarm node: a network namespace, a mount/UTS context and a dockerd."""

    def __init__(self, lab: NodeHost, index: int) -> None:
        self.lab = lab
        self.index = index
        node_dir = lab.workdir / f"node{index}"
        netns = f"{ns_prefix(lab.name)}node{index}"
        super().__init__(
            netns,
            socket=node_dir / "docker.sock",
            log=lab.workdir / "logs" / f"node{index}.log",
            pidfile=node_dir / "docker.pid",
            cgroup_parent=f"/{netns}",
        )

    def __repr__(self) -> str:
        return f"Node({self.index}, {self.netns}, {self.address})"

    # -- identity
    @property
    def hostname(self) -> str:
        """What dockerd reports as its name, hence the swarm node's hostname."""
        return f"{self.lab.name}-node{self.index}" if self.lab.name else f"node{self.index}"

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.lab.subnet.network_address + self.index

    @property
    def is_manager(self) -> bool:
        return self.index <= self.lab.managers

    @property
    def cgroup(self) -> str:
        """dockerd's --cgroup-parent; the daemon itself sits in ``<cgroup>/daemon``."""
        return self.cgroup_parent

    # -- paths
    @property
    def dir(self) -> Path:
        return self.socket.parent

    @property
    def data_root(self) -> Path:
        return self.dir / "data"

    @property
    def run_dir(self) -> Path:
        """Bound onto /run/docker (the exec root) inside the node; plugin sockets live here."""
        return self.dir / "run"

    @property
    def plugin_state_source(self) -> Path:
        """Source of a managed plugin's `state` mount on this node."""
        return self.dir / "plugin" / "state"

    @property
    def plugin_run_source(self) -> Path:
        """Source of a managed plugin's `run` mount; a shared mount inside the node."""
        return self.dir / "plugin" / "run"

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env["PATH"] = f"{self.lab.workdir / 'bin'}:{SYSTEM_PATH}:{env.get('PATH', '')}"
        env["DOCKER_CONFIG"] = str(self.lab.workdir / "client")
        return env

    # -- commands
    def exec(self, *argv: str, check: bool = True, timeout: float = 60,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ARGV in this node's network namespace (``docker`` there talks to this node)."""
        return run(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout,
                   env=self.env, input=input)

    def plugin_run_dir(self, name: str) -> Path:
        """Where the plugin's socket is, seen from the root mount namespace."""
        return self.run_dir / "plugins" / self.plugin_id(name)

    def plugin_status(self, name: str) -> dict[str, Any]:
        """The plugin's own ``Swarmnet.Status`` reply (what ``swarmnet status`` prints)."""
        code, body = unix_post(self.plugin_socket(name), "/Swarmnet.Status", b"{}", timeout=30)
        if code != 200:
            raise BedError(f"Swarmnet.Status of {name} on {self.netns}: {code} {body[:400]!r}")
        return dict(json.loads(body))

    def plugin_socket(self, name: str) -> Path:
        """The plugin's unix socket, seen from the root mount namespace. The path is often
        longer than a sockaddr_un holds: connect with :func:`unix_connect`."""
        run_dir = self.plugin_run_dir(name)
        sockets = [p for p in run_dir.iterdir() if p.is_socket()]
        if len(sockets) != 1:
            raise BedError(f"plugin {name} on {self.netns}: expected one socket in {run_dir}, "
                           f"found {sockets}")
        return sockets[0]

    def plugin_ids(self) -> set[str]:
        """IDs of managed plugins installed on this node, from its data root (no daemon needed)."""
        root = self.data_root / "plugins"
        if not root.is_dir():
            return set()
        return {p.name for p in root.iterdir() if PLUGIN_ID.match(p.name)}

    # -- lifecycle (used by Lab)
    def _start_script(self) -> str:
        layout = self.lab.cgroups
        d = self.dir
        q = shlex.quote
        dockerd = self.daemon_argv(self.data_root, "/run/docker", "/etc/docker/daemon.json",
                                   self.lab.dockerd_args)
        # Runs in the node's fresh mount namespace (made by `ip netns exec`) and UTS namespace.
        return (
            "set -eu\n"
            f"hostname {q(self.hostname)}\n"
            + layout.mount_script
            # A private /run: dockerd's default paths (/run/docker/plugins holds managed plugins'
            # sockets whatever --exec-root says; /run/containerd would make dockerd use a system
            # containerd) must be per node. The bind keeps them visible from the root namespace.
            + "mount -t tmpfs -o mode=755 snlab_run /run\n"
            "mkdir -p /run/docker /run/containerd /run/lock\n"
            f"mount --bind {q(str(self.run_dir))} /run/docker\n"
            # /etc/docker holds daemon.json and key.json (the engine ID) on a normal host.
            f"mount --bind {q(str(d / 'etc'))} /etc/docker\n"
            # A managed plugin may bind-mount things (network namespaces) under its `run` mount
            # and need them to outlive the plugin process; that takes a shared mount in the
            # node's mount namespace, as on a systemd host. They vanish with the node.
            f"mount --bind {q(str(self.plugin_run_source))} {q(str(self.plugin_run_source))}\n"
            f"mount --make-shared {q(str(self.plugin_run_source))}\n"
            "export DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1\n"
            f"exec {shlex.join(dockerd)}\n"
        )

    def _spawn(self) -> None:
        for sub in ("data", "run", "etc"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.plugin_run_source.mkdir(parents=True, exist_ok=True)
        self.plugin_state_source.mkdir(parents=True, exist_ok=True)
        self.plugin_state_source.chmod(0o700)
        # Like a reboot: runtime state from a previous (killed) daemon is gone.
        for entry in self.run_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
        daemon_json = self.dir / "etc" / "daemon.json"
        if not daemon_json.exists():
            daemon_json.write_text(json.dumps(self.lab.daemon_config, indent=2) + "\n")
        script = self.dir / "start.sh"
        script.write_text(self._start_script())
        tracking = self.lab.cgroups.tracking / self.cgroup_parent.lstrip("/") / "daemon"
        self._proc = spawn(
            ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", str(script)],
            log=self.log, cgroup=tracking)

    def _plugin_ids_in_use(self) -> set[str]:
        """Ids of this node's managed plugins: installed ones, and any a process runs as."""
        ids = self.plugin_ids()
        for pid in netns_pids(self.netns):
            for path in pid_cgroups(pid):
                ids.update(part for part in path.split("/") if PLUGIN_ID.match(part))
        return ids

    def _kill(self) -> set[str]:
        """SIGKILL everything of this node; returns the ids of the plugins it had.

        A managed plugin's cgroup path is relative to dockerd's own cgroup in each hierarchy
        (``/snlab-node1/daemon/<id>`` for pids here, ``<the caller's memory cgroup>/<id>``, or
        ``/<id>``), so outside --cgroup-parent: its processes are found by plugin id."""
        plugins = self._plugin_ids_in_use()
        layout = self.lab.cgroups

        def find() -> set[int]:
            own = layout.tracking / self.cgroup_parent.lstrip("/")
            pids = netns_pids(self.netns) | cgroup_procs(own)
            for cg in find_cgroups(layout.tracking, plugins):
                pids |= cgroup_procs(cg)
            return pids

        kill_until_gone(find, f"node {self.netns}")
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        return plugins
