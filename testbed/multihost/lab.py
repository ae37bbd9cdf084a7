"""A real N-node Docker swarm on one machine, for multi-host tests and benchmarks.

Every node is a network namespace with its own dockerd (own data root, exec root, socket, pidfile,
cgroup parent and hostname). The nodes hang off one bridge that lives in a namespace of its own
(the *fabric*), so nothing depends on the root namespace's addresses or iptables. An etcd server
runs in the fabric namespace, listening on the lab subnet. Everything the lab creates carries the
``snlab-`` prefix, so :meth:`Lab.down` finds it again without any state file.

See docs/lab.md for the layout and the reasons behind each step.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from plugin.unixhttp import SUN_PATH_MAX
from testbed.cgroups import CgroupLayout, cgroup_procs
from testbed.dockerd import DOCKER, DOCKERD, PLUGIN_NAME
from testbed.image import BUSYBOX
from testbed.mounts import mounts_under
from testbed.multihost import cleanup, etcd, fabric, swarm
from testbed.multihost.cleanup import STATE_FILE
from testbed.multihost.etcd import ETCD, ETCD_CLIENT_PORT, ETCDCTL
from testbed.multihost.names import existing_netns, lab_object_re, ns_prefix
from testbed.multihost.node import Node
from testbed.multihost.spawn import SYSTEM_PATH, parallel, spawn
from testbed.proc import NETNS_DIR, BedError, kill_until_gone, netns_pids, run

DEFAULT_SUBNET = ipaddress.IPv4Network("172.31.213.0/24")
DEFAULT_WORKDIR = Path("build/lab")
_NAME = re.compile(r"^[a-z0-9]{0,12}$")

# The lab's steps raise what every bed raises.
LabError = BedError


class Lab:
    """An N-node swarm plus etcd. ``node(1)`` is the first manager (it runs ``swarm init``).

    ``name`` tells concurrent labs apart ("" gives snlab-fabric, snlab-node1, ...; "ci" gives
    snlab-ci-fabric, snlab-ci-node1, ...). Each lab's fabric is isolated, so every lab can use
    the same subnet.
    """

    def __init__(self, nodes: int = 3, workdir: Path | str = DEFAULT_WORKDIR, *, name: str = "",
                 managers: int = 1, subnet: ipaddress.IPv4Network | str = DEFAULT_SUBNET,
                 dockerd_args: Sequence[str] = (),
                 daemon_config: Mapping[str, object] | None = None) -> None:
        if not _NAME.match(name):
            raise LabError(f"lab name {name!r}: use up to 12 lowercase letters and digits")
        if not 1 <= nodes <= 32:
            raise LabError(f"nodes={nodes}: must be between 1 and 32")
        if not 1 <= managers <= nodes:
            raise LabError(f"managers={managers}: must be between 1 and nodes ({nodes})")
        self.name = name
        self.workdir = Path(workdir).absolute()
        self.managers = managers
        self.subnet = ipaddress.IPv4Network(subnet)
        if self.subnet.num_addresses < 256:
            raise LabError(f"subnet {self.subnet}: use a /24 or larger")
        self.dockerd_args = tuple(dockerd_args)
        self.daemon_config = dict(daemon_config or {})
        self.nodes = [Node(self, i) for i in range(1, nodes + 1)]
        self.timings: dict[str, float] = {}
        self._cgroups: CgroupLayout | None = None
        self._etcd: subprocess.Popen[bytes] | None = None

    # -- construction from a running lab
    @classmethod
    def from_state(cls, workdir: Path | str = DEFAULT_WORKDIR) -> Lab:
        state_path = Path(workdir).absolute() / STATE_FILE
        try:
            state = json.loads(state_path.read_text())
        except OSError as e:
            raise LabError(f"no lab state at {state_path} (is the lab up?): {e}") from e
        return cls(state["nodes"], state["workdir"], name=state["name"],
                   managers=state["managers"], subnet=state["subnet"],
                   dockerd_args=state.get("dockerd_args", ()),
                   daemon_config=state.get("daemon_config"))

    def _state(self) -> dict[str, object]:
        return {"name": self.name, "nodes": len(self.nodes), "managers": self.managers,
                "subnet": str(self.subnet), "workdir": str(self.workdir),
                "dockerd_args": list(self.dockerd_args), "daemon_config": self.daemon_config,
                "etcd_url": self.etcd_url}

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- identity
    def node(self, i: int) -> Node:
        """Node ``i``, counting from 1."""
        if not 1 <= i <= len(self.nodes):
            raise LabError(f"no node {i}: the lab has nodes 1..{len(self.nodes)}")
        return self.nodes[i - 1]

    @property
    def fabric_netns(self) -> str:
        return f"{ns_prefix(self.name)}fabric"

    @property
    def etcd_address(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + (self.subnet.num_addresses - 2)

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_address}:{ETCD_CLIENT_PORT}"

    @property
    def cgroups(self) -> CgroupLayout:
        if self._cgroups is None:
            self._cgroups = CgroupLayout.detect()
        return self._cgroups

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    # -- commands
    def fabric_exec(self, *argv: str, check: bool = True,
                    timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ARGV in the fabric namespace (where the bridge and etcd are)."""
        return run(["ip", "netns", "exec", self.fabric_netns, *argv], check=check,
                    timeout=timeout)

    def etcdctl(self, *args: str, check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (API v3) against the lab's etcd."""
        return self.fabric_exec(ETCDCTL, "--endpoints", self.etcd_url, *args, check=check,
                                timeout=timeout)

    # -- up
    def up(self, timeout: float = 120) -> None:
        """Create everything. On failure, remove what was made and raise LabError."""
        started = time.monotonic()
        self._preflight()
        try:
            self._step("state file", self._write_state)
            self._step("network namespaces", self._make_network)
            self._step("start etcd and dockerds", self._start_daemons)
            self._step("wait for dockerds", lambda: self._wait_nodes(timeout))
            self._step("wait for etcd", lambda: self._wait_etcd(timeout))
            self._step("import busybox", self._import_image)
            self._step("swarm init/join", self._form_swarm)
            self._step("wait for swarm nodes Ready", lambda: self.wait_swarm_ready(timeout))
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        self.timings["up"] = time.monotonic() - started

    def _step(self, what: str, fn: Callable[[], object]) -> None:
        t = time.monotonic()
        try:
            fn()
        except LabError as e:
            raise LabError(f"lab up failed at step '{what}': {e}\n(logs in {self.logs})") from e
        except Exception as e:
            raise LabError(f"lab up failed at step '{what}': {type(e).__name__}: {e}\n"
                           f"(logs in {self.logs})") from e
        self.timings[what] = time.monotonic() - t

    def _preflight(self) -> None:
        problems = []
        if os.geteuid() != 0:
            problems.append("must run as root")
        for tool in (DOCKER, DOCKERD, ETCD, ETCDCTL, BUSYBOX, "/usr/bin/unshare"):
            if not os.access(tool, os.X_OK):
                problems.append(f"missing {tool}")
        for tool in ("ip", "stat", "hostname", "mount"):
            if shutil.which(tool, path=SYSTEM_PATH) is None:
                problems.append(f"missing {tool}")
        longest = self.workdir / "node99" / "docker.sock"
        if len(str(longest)) > SUN_PATH_MAX:
            problems.append(f"workdir {self.workdir} is too long for unix socket paths "
                            f"(max {SUN_PATH_MAX - len('/node99/docker.sock')} characters)")
        existing = self.existing_netns()
        if existing:
            flag = f" --name {self.name}" if self.name else ""
            problems.append(f"lab {self.name or '(default)'} already exists "
                            f"({', '.join(existing)}); run `make lab-down` or "
                            f"`python -m testbed.multihost down{flag}` first")
        try:
            self._cgroups = CgroupLayout.detect()
        except LabError as e:
            problems.append(str(e))
        if problems:
            raise LabError("lab up: " + "; ".join(problems))

    def existing_netns(self) -> list[str]:
        return existing_netns(self.name)

    def _write_state(self) -> None:
        for d in (self.workdir, self.logs, self.workdir / "bin", self.workdir / "client"):
            d.mkdir(parents=True, exist_ok=True)
        link = self.workdir / "bin" / "docker"
        link.unlink(missing_ok=True)
        link.symlink_to(DOCKER)
        for log in self.logs.glob("*.log"):
            log.unlink()
        (self.workdir / STATE_FILE).write_text(json.dumps(self._state(), indent=2) + "\n")

    def _make_network(self) -> None:
        prefix = self.subnet.prefixlen
        fabric.make_fabric(
            self.fabric_netns, ipaddress.IPv4Interface(f"{self.etcd_address}/{prefix}"),
            [(n.index, n.netns, ipaddress.IPv4Interface(f"{n.address}/{prefix}"))
             for n in self.nodes])

    def _spawn(self, argv: list[str], *, log: Path, cgroup: Path) -> subprocess.Popen[bytes]:
        """Start a daemon in its own session, placed in ``cgroup`` before it execs."""
        return spawn(argv, log=log, cgroup=cgroup)

    def _start_daemons(self) -> None:
        etcd_dir = self.workdir / "etcd"
        etcd_dir.mkdir(exist_ok=True)
        self._etcd = self._spawn(etcd.etcd_argv(self.fabric_netns, etcd_dir, self.etcd_url),
                                 log=self.logs / "etcd.log",
                                 cgroup=self.cgroups.tracking / self.fabric_netns / "etcd")
        for node in self.nodes:
            node._spawn()

    def _wait_nodes(self, timeout: float) -> None:
        for node in self.nodes:
            node.wait_ready(timeout)

    def _wait_etcd(self, timeout: float) -> None:
        etcd.wait_healthy(
            self._etcd,
            lambda: self.etcdctl("endpoint", "health", check=False, timeout=10).returncode == 0,
            self.logs / "etcd.log", timeout)

    def _import_image(self) -> None:
        swarm.import_image(self.nodes, self.workdir / "busybox.tar")

    def _form_swarm(self) -> None:
        swarm.form_swarm(self.nodes)

    def manager(self) -> Node:
        """A running manager node (node 1 unless it is down)."""
        return swarm.manager(self.nodes)

    def swarm_nodes(self) -> dict[str, tuple[str, str]]:
        """Hostname -> (status, availability) as the swarm managers see it."""
        return swarm.swarm_nodes(self.nodes)

    def wait_swarm_ready(self, timeout: float = 60) -> None:
        swarm.wait_swarm_ready(self.nodes, timeout)

    # -- node failure
    def kill_node(self, i: int) -> None:
        """Hard-stop node ``i``: SIGKILL its dockerd, containerd, shims, containers and plugins.

        Like a power cut: its netns and veth stay, so other nodes still reach its address but
        nothing answers VXLAN there. The swarm state on disk survives for :meth:`start_node`.
        """
        self.node(i)._kill()

    def start_node(self, i: int, timeout: float = 60) -> None:
        """Boot node ``i`` again after :meth:`kill_node`; it rejoins the swarm from its state."""
        node = self.node(i)
        if node.is_running():
            return
        node._kill()  # anything half-dead from before
        node._spawn()
        node.wait_ready(timeout)

    def disconnect_node(self, i: int) -> None:
        """Cut node ``i`` off the fabric (its bridge port goes down); everything keeps running."""
        self._set_port(i, "down")

    def connect_node(self, i: int) -> None:
        self._set_port(i, "up")

    def _set_port(self, i: int, state: str) -> None:
        fabric.set_port(self.fabric_netns, self.node(i).index, state)

    # -- plugins
    def install_plugin(self, plugin_dir: Path | str, name: str = PLUGIN_NAME,
                       settings: Mapping[str, str] | None = None, timeout: float = 300) -> None:
        """Create, configure and enable a managed plugin from ``plugin_dir`` (config.json +
        rootfs/) on every node. Each node gets its own state and run directories, and
        ETCD_ENDPOINTS pointing at the lab's etcd unless ``settings`` says otherwise."""
        swarm.install_plugin(self.nodes, Path(plugin_dir).absolute(), name, self.etcd_url,
                             settings, timeout)

    def remove_plugin(self, name: str = PLUGIN_NAME) -> None:
        parallel(lambda node: node.remove_plugin(name), self.nodes)

    # -- status
    def status(self) -> dict[str, object]:
        nodes = []
        for node in self.nodes:
            info = {"node": node.index, "netns": node.netns, "hostname": node.hostname,
                    "address": str(node.address), "socket": str(node.socket),
                    "manager": node.is_manager, "dockerd_pid": node.dockerd_pid(),
                    "netns_exists": (NETNS_DIR / node.netns).exists()}
            if node.is_running():
                out = node.docker("info", "--format",
                                  "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
                                  check=False)
                info["swarm"] = out.stdout.strip() or out.stderr.strip()
            nodes.append(info)
        etcd_ok = (NETNS_DIR / self.fabric_netns).exists() and self.etcdctl(
            "endpoint", "health", check=False, timeout=10).returncode == 0
        return {"name": self.name, "workdir": str(self.workdir), "etcd_url": self.etcd_url,
                "etcd_healthy": etcd_ok, "nodes": nodes}

    # -- down
    def down(self) -> None:
        """Remove everything of this lab, found by name prefix: works without a state file and
        after a crash. Keeps only ``<workdir>/logs``."""
        started = time.monotonic()
        pattern = lab_object_re(self.name)
        layout = self.cgroups
        nsnames = self.existing_netns()
        node_dirs = sorted(self.workdir.glob("node*")) if self.workdir.is_dir() else []
        node_indexes = {n.index for n in self.nodes}
        cgroup_names = []
        with contextlib.suppress(OSError):
            cgroup_names = [e.name for e in layout.tracking.iterdir() if pattern.match(e.name)]
        for name in [*nsnames, *cgroup_names]:
            m = re.search(r"node(\d+)$", name)
            if m:
                node_indexes.add(int(m.group(1)))
        for d in node_dirs:
            m = re.fullmatch(r"node(\d+)", d.name)
            if m:
                node_indexes.add(int(m.group(1)))
        nodes = [Node(self, i) for i in sorted(node_indexes)]
        for node in nodes:  # keep handles to daemons this process started, to reap them
            if node.index <= len(self.nodes):
                node._proc = self.nodes[node.index - 1]._proc

        # 1. processes: every node's, then etcd and anything else in the fabric.
        plugin_ids: set[str] = set()
        for node in nodes:
            plugin_ids |= node._kill()
        fabric_cg = layout.tracking / self.fabric_netns
        kill_until_gone(lambda: netns_pids(self.fabric_netns) | cgroup_procs(fabric_cg),
                         self.fabric_netns)
        if self._etcd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._etcd.wait(timeout=5)
            self._etcd = None
        for node in self.nodes:
            node._proc = None

        # 2. cgroups, in every hierarchy: ours by prefix, plugins' by id wherever they are.
        cleanup.remove_cgroups(layout, pattern, plugin_ids, time.monotonic() + 15)

        # 3. namespaces: deleting them deletes the veths and the bridge inside.
        for name in self.existing_netns():
            fabric.remove_netns(name)

        # 4. mounts: none should exist in this namespace, but never leave one behind.
        for mountpoint in mounts_under(self.workdir):
            subprocess.run(["umount", "-l", mountpoint], check=False)

        # 5. the files the lab made (never anything else in the workdir), except logs.
        cleanup.remove_own_files(self.workdir)
        self.timings["down"] = time.monotonic() - started

    def _own_files(self) -> list[Path]:
        """What the lab made in its workdir, bar logs/."""
        return cleanup.own_files(self.workdir)

    # -- leftovers (used by tests and `status`)
    def leftovers(self, plugin_ids: Iterable[str] = ()) -> dict[str, list[str]]:
        """Anything of this lab that still exists. Empty lists after a complete ``down``.
        ``plugin_ids``: managed plugins it had (their cgroups are not named after the lab)."""
        pattern = lab_object_re(self.name)
        # Daemons name their node directory or etcd's in their arguments; `ip netns exec` names
        # the namespace. (The workdir alone would match this process, e.g. `... multihost down`.)
        needles = [f"{self.workdir}/node", f"{self.workdir}/etcd", f" {self.fabric_netns} "]
        needles += [f" {n.netns} " for n in self.nodes]
        return {"netns": self.existing_netns(),
                "cgroups": cleanup.left_cgroups(pattern, plugin_ids),
                "mounts": mounts_under(self.workdir),
                "processes": cleanup.left_processes(pattern, needles),
                "files": [str(p) for p in self._own_files()]}
