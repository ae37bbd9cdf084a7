"""One real dockerd on this host, and everything needed to leave no trace of it.

The dockerd runs in the host's *mount* namespace (as on a real host: the plugin's per-network
namespaces must be bind-mounted where the host sees them) but in a network namespace of its
own (``sne2e-<name>-<pid>``): its docker0, docker_gwbridge, iptables rules, the plugin's VXLAN
and veth devices and every container address stay in there and disappear with it. Its data
root, exec root, socket, pidfile, config file and key file live in one work directory, and its
containers' cgroups under a parent of their own (``/sne2e-<name>-<pid>``).

Two things escape the work directory, and :meth:`DockerHost.down` removes both: managed
plugins' sockets (20.10 always puts them under ``/run/docker/plugins/<plugin id>``) and their
cgroups (``/<plugin id>`` in every hierarchy).

Used by the e2e suite, by kernel-lab's swarm (tests/vmswarm) and to build the plugin bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.cgroups import hierarchies, rmdir_tree
from testbed.dockerd import PLUGIN_NAME, Dockerd
from testbed.mounts import mounts_under
from testbed.proc import (
    NETNS_DIR,
    BedError,
    cmdline,
    descendants,
    in_netns_of,
    kill_until_gone,
    pid_alive,
    run,
    wait_for,
)

PLUGIN_EXEC_ROOT = Path("/run/docker/plugins")  # hard-coded in dockerd 20.10
NETNS_PREFIX = "sne2e-"
# One file per live host, naming its work directory, so a later session can clean up after
# a killed one (see cleanup_stale).
REGISTRY_DIR = Path("/run/swarmnet-e2e")
# The underlay inside dockerd's namespace: a veth pair with a documentation address (RFC 5737)
# on one end, so the plugin sees a normal 1500-byte interface rather than lo. Both ends stay
# in the namespace; nothing is ever sent to that address from outside.
UNDERLAY = ("e2eup0", "e2eup1")
UNDERLAY_ADDR = "192.0.2.1"
UNDERLAY_MTU = 1500
REPO = Path(__file__).resolve().parents[1]
PLUGIN_ID = re.compile(r"^[0-9a-f]{64}$")


class DockerHost(Dockerd):
    """One dockerd, started and stopped by its user (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        live_restore: bool = False,
        extra_args: Sequence[str] = (),
        netns_prefix: str = NETNS_PREFIX,
    ) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,8}", name):
            raise BedError(f"host name {name!r}: 1-8 lowercase letters and digits")
        self.name = name
        self.workdir = workdir.absolute()
        self.live_restore = live_restore
        self.extra_args = tuple(extra_args)
        netns = f"{netns_prefix}{name}-{os.getpid()}"
        super().__init__(
            netns,
            socket=self.workdir / "docker.sock",
            log=self.workdir / "dockerd.log",
            pidfile=self.workdir / "docker.pid",
            cgroup_parent=f"/{netns}",
        )
        self.plugin_ids: set[str] = set()

    # -- paths
    @property
    def state_dir(self) -> Path:
        """The host side of the plugin's ``state`` mount."""
        return self.workdir / "swarmnet-state"

    @property
    def run_dir(self) -> Path:
        """The host side of the plugin's ``run`` mount (netns/ holds the network namespaces)."""
        return self.workdir / "swarmnet-run"

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "DOCKER_CONFIG": str(self.workdir / "client")}

    # -- commands
    def in_netns(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ARGV in dockerd's network namespace (and nothing else: same mounts)."""
        return run(
            ["nsenter", f"--net={NETNS_DIR / self.netns}", "--", *argv],
            check=check,
            timeout=timeout,
        )

    def make(self, *targets: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run(["make", "-C", str(REPO), *targets], timeout=timeout, env=self.env)

    # -- lifecycle
    def up(self, timeout: float = 60) -> None:
        for d in (self.workdir, self.state_dir, self.run_dir, self.workdir / "client"):
            d.mkdir(parents=True, exist_ok=True)
        REGISTRY_DIR.mkdir(exist_ok=True)
        (REGISTRY_DIR / self.netns).write_text(f"{self.name}\n{self.workdir}\n")
        # The engine key would otherwise land in /etc/docker/key.json.
        config = {"deprecated-key-path": str(self.workdir / "key.json")}
        (self.workdir / "daemon.json").write_text(json.dumps(config) + "\n")
        if not (NETNS_DIR / self.netns).exists():
            run(["ip", "netns", "add", self.netns], timeout=10)
        ip = ["ip", "-n", self.netns]
        run([*ip, "link", "set", "lo", "up"], timeout=10)
        if run([*ip, "link", "show", UNDERLAY[0]], check=False, timeout=10).returncode != 0:
            mtu = str(UNDERLAY_MTU)
            run([*ip, "link", "add", UNDERLAY[0], "mtu", mtu, "type", "veth",
                 "peer", "name", UNDERLAY[1], "mtu", mtu], timeout=10)  # fmt: skip
            run([*ip, "addr", "add", f"{UNDERLAY_ADDR}/24", "dev", UNDERLAY[0]], timeout=10)
            for dev in UNDERLAY:
                run([*ip, "link", "set", dev, "up"], timeout=10)
        self.start(timeout)

    def start(self, timeout: float = 60) -> None:
        argv = [
            "nsenter", f"--net={NETNS_DIR / self.netns}", "--",
            *self.daemon_argv(
                self.workdir / "data", self.workdir / "exec", self.workdir / "daemon.json",
                [*(["--live-restore"] if self.live_restore else []), *self.extra_args],
            ),
        ]  # fmt: skip
        env = dict(os.environ, DOCKER_SERVICE_PREFER_OFFLINE_IMAGE="1")
        with open(self.log, "ab") as log:
            log.write(f"\n=== start {shlex.join(argv)}\n".encode())
            self._proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.wait_ready(timeout)

    def stop(self, timeout: float = 60) -> None:
        """Stop dockerd the way an init system would: SIGTERM, then SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        self.socket.unlink(missing_ok=True)

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start(timeout)

    # -- swarm, plugin
    def swarm_init(self) -> None:
        self.docker(
            "swarm", "init", "--advertise-addr", UNDERLAY_ADDR,
            "--listen-addr", f"{UNDERLAY_ADDR}:2377", timeout=120,
        )  # fmt: skip
        wait_for(
            "swarm node Ready",
            lambda: self.docker("node", "ls", "--format", "{{.Status}}").stdout.strip() == "Ready",
            60,
        )

    def install_plugin(
        self, settings: Mapping[str, str] | None = None, name: str = PLUGIN_NAME
    ) -> str:
        """``make install`` against this dockerd, with the state and run mounts in the workdir.
        Builds build/plugin first when it is stale (needs this dockerd for `docker build`)."""
        values = {
            # Load balancing reads this dockerd's API, not the host's default one.
            "docker-socket.source": str(self.socket),
            **(settings or {}),
        }
        extra = " ".join(f"{k}={v}" for k, v in values.items())
        tag = name.rsplit(":", 1)
        self.make(
            "install",
            f"PLUGIN_NAME={tag[0]}",
            f"PLUGIN_TAG={tag[1]}",
            f"STATE_DIR={self.state_dir}",
            f"RUN_DIR={self.run_dir}",
            f"DOCKER_EXEC_ROOT={self.workdir / 'exec'}",
            f"PLUGIN_SETTINGS={extra}",
        )
        return self.plugin_id(name)

    def plugin_id(self, name: str = PLUGIN_NAME) -> str:
        pid = super().plugin_id(name)
        self.plugin_ids.add(pid)
        return pid

    def plugin_socket(self, name: str = PLUGIN_NAME) -> Path:
        return PLUGIN_EXEC_ROOT / self.plugin_id(name) / "swarmnet.sock"

    def plugin_pids(self, name: str = PLUGIN_NAME) -> set[int]:
        """Processes of the managed plugin (runc puts it in cgroup /<plugin id>)."""
        plugin_id = self.plugin_id(name)
        for hierarchy in hierarchies():
            procs = hierarchy / plugin_id / "cgroup.procs"
            if procs.is_file():
                return {int(p) for p in procs.read_text().split()}
        return set()

    # -- what the plugin left in the kernel
    def links(self) -> list[str]:
        """Interface names in dockerd's network namespace."""
        out = self.in_netns("ip", "-j", "link", "show").stdout
        return [link["ifname"] for link in json.loads(out)]

    def swarmnet_links(self) -> list[str]:
        return [n for n in self.links() if n.startswith("sn")]

    def plugin_netns(self) -> list[str]:
        """Namespace files the plugin keeps under the run mount, as the host sees them."""
        d = self.run_dir / "netns"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    # -- teardown
    def _processes(self) -> set[int]:
        """Every process of this dockerd: dockerd, its containerd, shims (reparented to init),
        plugins and containers (children of shims), in or out of our network namespace."""
        inside = in_netns_of(NETNS_DIR / self.netns)
        needle = str(self.workdir)
        roots = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            if needle in cmdline(pid) or inside(pid):
                roots.add(pid)
        return {p for p in descendants(roots) if p != os.getpid() and pid_alive(p)}

    def _plugin_ids_on_disk(self) -> set[str]:
        root = self.workdir / "data" / "plugins"
        ids = set(self.plugin_ids)
        if root.is_dir():
            ids |= {p.name for p in root.iterdir() if PLUGIN_ID.match(p.name)}
        return ids

    def down(self) -> None:
        """Remove everything of this host, even after a failed test. Best effort first (so
        dockerd releases what it holds), then by force."""
        if self._proc is not None and self._proc.poll() is None and self.ping():
            with contextlib.suppress(BedError):
                ids = self.docker("ps", "-aq", timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=120)
                self.docker("swarm", "leave", "--force", check=False, timeout=60)
                for line in self.docker(
                    "plugin", "ls", "--format", "{{.ID}}", "--no-trunc", timeout=30
                ).stdout.split():
                    self.plugin_ids.add(line)
                    self.docker("plugin", "disable", "-f", line, check=False, timeout=60)
        plugin_ids = self._plugin_ids_on_disk()
        self.stop(timeout=30)
        # Shims, plugins and containers outlive dockerd with --live-restore.
        kill_until_gone(self._processes, f"processes of {self.netns}")
        for point in mounts_under(self.workdir):
            run(["umount", "-l", point], check=False, timeout=30)
        for plugin_id in plugin_ids:
            d = PLUGIN_EXEC_ROOT / plugin_id
            if d.is_dir():
                for point in mounts_under(d):
                    run(["umount", "-l", point], check=False, timeout=30)
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
        deadline = time.monotonic() + 15
        for hierarchy in hierarchies():
            for name in [self.cgroup_parent.lstrip("/"), *plugin_ids]:
                rmdir_tree(hierarchy / name, deadline)
        if (NETNS_DIR / self.netns).exists():
            run(["ip", "netns", "del", self.netns], check=False, timeout=30)
        (REGISTRY_DIR / self.netns).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            REGISTRY_DIR.rmdir()

    def leftovers(self) -> dict[str, list[str]]:
        """What of this host still exists (all lists empty after a complete :meth:`down`)."""
        ids = self._plugin_ids_on_disk()
        cgroups = [
            str(h / n)
            for h in hierarchies()
            for n in [self.cgroup_parent.lstrip("/"), *ids]
            if (h / n).exists()
        ]
        return {
            "processes": [f"{p}: {cmdline(p)}" for p in sorted(self._processes())],
            "mounts": mounts_under(self.workdir),
            "netns": [self.netns] if (NETNS_DIR / self.netns).exists() else [],
            "plugin_sockets": [
                str(PLUGIN_EXEC_ROOT / i) for i in ids if (PLUGIN_EXEC_ROOT / i).exists()
            ],
            "cgroups": cgroups,
        }


def cleanup_stale() -> list[str]:
    """Tear down hosts of earlier e2e sessions that died without cleaning up (their pytest
    process is gone). Returns the namespaces it removed."""
    removed = []
    names = set()
    if REGISTRY_DIR.is_dir():
        names |= {p.name for p in REGISTRY_DIR.iterdir()}
    if NETNS_DIR.is_dir():
        names |= {p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NETNS_PREFIX)}
    for netns in sorted(names):
        m = re.fullmatch(rf"{NETNS_PREFIX}([a-z0-9]+)-(\d+)", netns)
        if not m:
            continue
        owner = int(m.group(2))
        if owner == os.getpid() or (pid_alive(owner) and "pytest" in cmdline(owner)):
            continue
        record = REGISTRY_DIR / netns
        workdir = None
        with contextlib.suppress(OSError, IndexError):
            workdir = Path(record.read_text().splitlines()[1])
        host = DockerHost(workdir or Path(f"/nonexistent/{netns}"), m.group(1))
        host.netns = netns
        host.cgroup_parent = f"/{netns}"
        host.down()
        removed.append(netns)
    return removed
