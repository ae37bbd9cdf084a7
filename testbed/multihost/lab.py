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
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyroute2 import NetNS, netns

from plugin.unixhttp import SUN_PATH_MAX
from testbed.cgroups import (
    CgroupLayout,
    cgroup_procs,
    find_cgroups,
    hierarchies,
    pid_cgroups,
    rmdir_tree,
)
from testbed.dockerd import DOCKER, DOCKERD, PLUGIN_NAME, Dockerd, docker_ping
from testbed.image import BUSYBOX, busybox_tar
from testbed.mounts import mounts_under
from testbed.proc import (
    NETNS_DIR,
    BedError,
    kill_until_gone,
    netns_pids,
    pid_alive,
    run,
    tail,
)

PREFIX = "snlab-"
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
DEFAULT_SUBNET = ipaddress.IPv4Network("172.31.213.0/24")
DEFAULT_WORKDIR = Path("build/lab")
ETCD_CLIENT_PORT = 2379
STATE_FILE = "lab.json"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_OWN_FILES = frozenset({STATE_FILE, "bin", "client", "etcd", "busybox.tar"})
_PLUGIN_ID = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9]{0,12}$")

# The lab's steps raise what every bed raises.
LabError = BedError


# --------------------------------------------------------------------------- naming


def ns_prefix(name: str) -> str:
    """Prefix of every namespace and cgroup of the lab called ``name`` ("" is the default lab)."""
    return f"{PREFIX}{name}-" if name else PREFIX


def lab_object_re(name: str) -> re.Pattern[str]:
    """Matches the netns/cgroup names that belong to lab ``name`` and to no other lab."""
    return re.compile(rf"^{re.escape(ns_prefix(name))}(?:fabric|node\d+)$")


# --------------------------------------------------------------------------- nodes


class Node(Dockerd):
    """One swarm node: a network namespace, a mount/UTS context and a dockerd."""

    def __init__(self, lab: Lab, index: int) -> None:
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

    def plugin_socket(self, name: str) -> Path:
        """The plugin's unix socket, seen from the root mount namespace. The path is often
        longer than a sockaddr_un holds: connect with :func:`unix_connect`."""
        run_dir = self.plugin_run_dir(name)
        sockets = [p for p in run_dir.iterdir() if p.is_socket()]
        if len(sockets) != 1:
            raise LabError(f"plugin {name} on {self.netns}: expected one socket in {run_dir}, "
                           f"found {sockets}")
        return sockets[0]

    def plugin_ids(self) -> set[str]:
        """IDs of managed plugins installed on this node, from its data root (no daemon needed)."""
        root = self.data_root / "plugins"
        if not root.is_dir():
            return set()
        return {p.name for p in root.iterdir() if _PLUGIN_ID.match(p.name)}

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
        self._proc = self.lab._spawn(
            ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", str(script)],
            log=self.log, cgroup=tracking)

    def _plugin_ids_in_use(self) -> set[str]:
        """Ids of this node's managed plugins: installed ones, and any a process runs as."""
        ids = self.plugin_ids()
        for pid in netns_pids(self.netns):
            for path in pid_cgroups(pid):
                ids.update(part for part in path.split("/") if _PLUGIN_ID.match(part))
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


# --------------------------------------------------------------------------- the lab


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
        pattern = lab_object_re(self.name)
        with contextlib.suppress(FileNotFoundError):
            return sorted(n for n in os.listdir(NETNS_DIR) if pattern.match(n))
        return []

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
        netns.create(self.fabric_netns)
        for node in self.nodes:
            netns.create(node.netns)
        prefix = self.subnet.prefixlen
        with NetNS(self.fabric_netns) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            ns.link("add", ifname="br0", kind="bridge")
            br = ns.link_lookup(ifname="br0")[0]
            ns.addr("add", index=br, address=str(self.etcd_address), prefixlen=prefix)
            ns.link("set", index=br, state="up")
            for node in self.nodes:
                port = f"n{node.index}"
                # Created here with its peer put straight into the node: no link ever exists in
                # the root namespace, even for a moment.
                ns.link("add", ifname=port, kind="veth",
                        peer={"ifname": "eth0", "net_ns_fd": node.netns})
                idx = ns.link_lookup(ifname=port)[0]
                ns.link("set", index=idx, master=br, state="up")
        for node in self.nodes:
            with NetNS(node.netns) as ns:
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                eth = ns.link_lookup(ifname="eth0")[0]
                ns.addr("add", index=eth, address=str(node.address), prefixlen=prefix)
                ns.link("set", index=eth, state="up")

    def _spawn(self, argv: list[str], *, log: Path, cgroup: Path) -> subprocess.Popen[bytes]:
        """Start a daemon in its own session, placed in ``cgroup`` before it execs."""
        cgroup.mkdir(parents=True, exist_ok=True)
        procs = str(cgroup / "cgroup.procs")

        def enter_cgroup() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        env = {"PATH": SYSTEM_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        with open(log, "ab") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=env, start_new_session=True, preexec_fn=enter_cgroup)

    def _start_daemons(self) -> None:
        etcd_dir = self.workdir / "etcd"
        etcd_dir.mkdir(exist_ok=True)
        url = self.etcd_url
        peer = "http://127.0.0.1:2380"  # the fabric's own loopback: a one-member cluster
        self._etcd = self._spawn(
            ["ip", "netns", "exec", self.fabric_netns, ETCD,
             "--name", f"{PREFIX}etcd", "--data-dir", str(etcd_dir),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"{PREFIX}etcd={peer}", "--initial-cluster-state", "new"],
            log=self.logs / "etcd.log",
            cgroup=self.cgroups.tracking / self.fabric_netns / "etcd")
        for node in self.nodes:
            node._spawn()

    def _wait_nodes(self, timeout: float) -> None:
        for node in self.nodes:
            node.wait_ready(timeout)

    def _wait_etcd(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._etcd is not None and self._etcd.poll() is not None:
                log = self.logs / "etcd.log"
                raise LabError(f"etcd exited with {self._etcd.returncode}; log {log}:\n"
                               f"{tail(log)}")
            if self.etcdctl("endpoint", "health", check=False, timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LabError(f"etcd not healthy after {timeout:g}s")
            time.sleep(0.2)

    def _import_image(self) -> None:
        tar = busybox_tar(self.workdir / "busybox.tar")
        _parallel(lambda node: node.import_busybox(tar), self.nodes)

    def _form_swarm(self) -> None:
        first = self.node(1)
        addr = str(first.address)
        first.docker("swarm", "init", "--advertise-addr", addr, "--data-path-addr", addr,
                     "--listen-addr", f"{addr}:2377")
        tokens = {role: first.docker("swarm", "join-token", "-q", role).stdout.strip()
                  for role in ("manager", "worker")}

        def join(node: Node) -> None:
            a = str(node.address)
            node.docker("swarm", "join", "--token",
                        tokens["manager" if node.is_manager else "worker"],
                        "--advertise-addr", a, "--data-path-addr", a,
                        "--listen-addr", f"{a}:2377", f"{addr}:2377", timeout=120)

        # Managers one at a time (each changes the raft membership), workers all at once.
        for node in self.nodes[1:]:
            if node.is_manager:
                join(node)
        _parallel(join, [n for n in self.nodes[1:] if not n.is_manager])

    def manager(self) -> Node:
        """A running manager node (node 1 unless it is down)."""
        for node in self.nodes:
            if node.is_manager and docker_ping(node.socket):
                return node
        raise LabError("no manager node is running")

    def swarm_nodes(self) -> dict[str, tuple[str, str]]:
        """Hostname -> (status, availability) as the swarm managers see it."""
        out = self.manager().docker("node", "ls", "--format", "{{json .}}").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        # A node that has just joined has no description (so no hostname) for a moment.
        return {r["Hostname"]: (r["Status"], r["Availability"]) for r in rows if r["Hostname"]}

    def wait_swarm_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        want = {n.hostname for n in self.nodes}
        while True:
            seen = {h: s for h, (s, _) in self.swarm_nodes().items() if h in want}
            if len(seen) == len(want) and all(s == "Ready" for s in seen.values()):
                return
            if time.monotonic() > deadline:
                raise LabError(f"swarm nodes not all Ready after {timeout:g}s: {seen}")
            time.sleep(0.2)

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
        node = self.node(i)
        with NetNS(self.fabric_netns) as ns:
            ns.link("set", index=ns.link_lookup(ifname=f"n{node.index}")[0], state=state)

    # -- plugins
    def install_plugin(self, plugin_dir: Path | str, name: str = PLUGIN_NAME,
                       settings: Mapping[str, str] | None = None, timeout: float = 300) -> None:
        """Create, configure and enable a managed plugin from ``plugin_dir`` (config.json +
        rootfs/) on every node. Each node gets its own state and run directories, and
        ETCD_ENDPOINTS pointing at the lab's etcd unless ``settings`` says otherwise."""
        plugin_dir = Path(plugin_dir).absolute()
        if not (plugin_dir / "config.json").is_file() or not (plugin_dir / "rootfs").is_dir():
            raise LabError(f"{plugin_dir} is not a plugin build (config.json + rootfs/); "
                           "run `make plugin` first")

        def install(node: Node) -> None:
            values = {"state.source": str(node.plugin_state_source),
                      "run.source": str(node.plugin_run_source),
                      # dockerd's exec root as the node's mount namespace sees it, and its API.
                      "docker-run.source": "/run/docker",
                      "docker-socket.source": str(node.socket),
                      "ETCD_ENDPOINTS": self.etcd_url, **(settings or {})}
            node.remove_plugin(name)
            node.docker("plugin", "create", name, str(plugin_dir), timeout=timeout)
            node.docker("plugin", "set", name, *(f"{k}={v}" for k, v in values.items()))
            result = node.docker("plugin", "enable", "--timeout", "60", name, check=False,
                                 timeout=120)
            if result.returncode != 0:
                raise LabError(f"plugin enable on {node.netns} failed: {result.stderr.strip()}\n"
                               f"dockerd log {node.log}:\n{tail(node.log)}")

        _parallel(install, self.nodes)

    def remove_plugin(self, name: str = PLUGIN_NAME) -> None:
        _parallel(lambda node: node.remove_plugin(name), self.nodes)

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
        deadline = time.monotonic() + 15
        for hierarchy in layout.hierarchies:
            if not hierarchy.is_dir():
                continue
            for cg in find_cgroups(hierarchy, plugin_ids):
                rmdir_tree(cg, deadline)
            for entry in hierarchy.iterdir():
                if entry.is_dir() and pattern.match(entry.name):
                    rmdir_tree(entry, deadline)

        # 3. namespaces: deleting them deletes the veths and the bridge inside.
        for name in self.existing_netns():
            _remove_netns(name)

        # 4. mounts: none should exist in this namespace, but never leave one behind.
        for mountpoint in mounts_under(self.workdir):
            subprocess.run(["umount", "-l", mountpoint], check=False)

        # 5. the files the lab made (never anything else in the workdir), except logs. A
        # plugin's rootfs is thousands of files per node: rm them all at once.
        if self.workdir.is_dir():
            entries = [str(e) for e in self._own_files()]
            if entries:
                rms = [subprocess.Popen(["rm", "-rf", "--one-file-system", e]) for e in entries]
                if any(rm.wait() != 0 for rm in rms):
                    raise LabError(f"could not delete everything in {self.workdir}")
        self.timings["down"] = time.monotonic() - started

    def _own_files(self) -> list[Path]:
        """What the lab made in its workdir, bar logs/."""
        if not self.workdir.is_dir():
            return []
        return sorted(p for p in self.workdir.iterdir()
                      if p.name in _OWN_FILES or re.fullmatch(r"node\d+", p.name))

    # -- leftovers (used by tests and `status`)
    def leftovers(self, plugin_ids: Iterable[str] = ()) -> dict[str, list[str]]:
        """Anything of this lab that still exists. Empty lists after a complete ``down``.
        ``plugin_ids``: managed plugins it had (their cgroups are not named after the lab)."""
        pattern = lab_object_re(self.name)
        plugin_ids = set(plugin_ids)
        cgroups = []
        for hierarchy in hierarchies():
            with contextlib.suppress(OSError):
                cgroups += [str(e) for e in hierarchy.iterdir() if pattern.match(e.name)]
            cgroups += [str(cg) for cg in find_cgroups(hierarchy, plugin_ids)]
        procs = []
        # Daemons name their node directory or etcd's in their arguments; `ip netns exec` names
        # the namespace. (The workdir alone would match this process, e.g. `... multihost down`.)
        needles = [f"{self.workdir}/node", f"{self.workdir}/etcd", f" {self.fabric_netns} "]
        needles += [f" {n.netns} " for n in self.nodes]
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            if not pid_alive(int(entry.name)):
                continue
            with contextlib.suppress(OSError):
                cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
                in_lab_cgroup = any(pattern.match(part) for path in pid_cgroups(int(entry.name))
                                    for part in path.split("/"))
                if in_lab_cgroup or any(needle in cmd for needle in needles):
                    procs.append(f"{entry.name}: {cmd.strip()}")
        files = [str(p) for p in self._own_files()]
        return {"netns": self.existing_netns(), "cgroups": sorted(cgroups),
                "mounts": mounts_under(self.workdir), "processes": procs, "files": files}


def _remove_netns(name: str) -> None:
    path = NETNS_DIR / name
    with contextlib.suppress(OSError):
        netns.remove(name)
    if path.exists():  # a half-made one: the file without its mount
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        path.unlink(missing_ok=True)


def _parallel(fn: Callable[[Node], None], nodes: Iterable[Node]) -> None:
    """Run ``fn`` on every node at once; re-raise the first failure (after all finish)."""
    nodes = list(nodes)
    if not nodes:
        return
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [pool.submit(fn, n) for n in nodes]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


def discover_workdir(name: str) -> Path | None:
    """The workdir of lab ``name``, read from a running dockerd's --data-root, if any runs."""
    for netns_name in sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []:
        if not lab_object_re(name).match(netns_name) or "node" not in netns_name:
            continue
        for pid in netns_pids(netns_name):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"--data-root" in argv[:-1]:
                    data_root = Path(os.fsdecode(argv[argv.index(b"--data-root") + 1]))
                    return data_root.parent.parent
    return None


def iter_labs() -> Iterator[str]:
    """Names of labs that have namespaces on this machine ("" is the default lab)."""
    seen = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(NETNS_DIR)):
            m = re.fullmatch(rf"{re.escape(PREFIX)}(?:([a-z0-9]+)-)?(?:fabric|node\d+)", entry)
            if m and (m.group(1) or "") not in seen:
                seen.add(m.group(1) or "")
                yield m.group(1) or ""
