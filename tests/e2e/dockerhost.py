"""A real dockerd for single-host end-to-end tests, and everything needed to leave no trace.

The dockerd runs in the host's *mount* namespace (as on a real host: the plugin's per-network
namespaces must be bind-mounted where the host sees them) but in a network namespace of its
own (``sne2e-<name>``): its docker0, docker_gwbridge, iptables rules, the plugin's VXLAN and
veth devices and every container address stay in there and disappear with it. Its data root,
exec root, socket, pidfile, config file and key file live in one work directory, and its
containers' cgroups under a parent of their own (``/sne2e-<name>``).

Two things escape the work directory, and :meth:`DockerHost.down` removes both: managed
plugins' sockets (20.10 always puts them under ``/run/docker/plugins/<plugin id>``) and their
cgroups (``/<plugin id>`` in every hierarchy).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shlex
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from plugin.unixhttp import UnixHTTPConnection

DOCKER = "/usr/bin/docker"  # the 20.10 client; /usr/local/bin/docker does not match the daemon
DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"  # busybox-static
IMAGE = "busybox:latest"
PLUGIN_NAME = "swarmnet-overlay:latest"
PLUGIN_EXEC_ROOT = Path("/run/docker/plugins")  # hard-coded in dockerd 20.10
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
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
REPO = Path(__file__).resolve().parents[2]
_PLUGIN_ID = re.compile(r"^[0-9a-f]{64}$")


class HostError(RuntimeError):
    """A step failed; the message says which and where the dockerd log is."""


# --------------------------------------------------------------------------- small helpers


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            input=input,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as e:
        raise HostError(f"timed out after {timeout:g}s: {shlex.join(argv)}") from e
    if check and proc.returncode != 0:
        raise HostError(
            f"exit {proc.returncode}: {shlex.join(argv)}\n"
            f"{proc.stdout.strip()}\n{proc.stderr.strip()}".rstrip()
        )
    return proc


def wait_for(
    what: str, predicate: Callable[[], object], timeout: float, interval: float = 0.2
) -> object:
    """Poll ``predicate`` until it returns something truthy; HostError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (HostError, OSError) as e:
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise HostError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def unix_post(
    path: str | Path,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("POST", url, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _ping(sock: Path) -> bool:
    try:
        conn = UnixHTTPConnection(sock, timeout=2)
        conn.request("GET", "/_ping")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    return ""


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _descendants(pids: set[int]) -> set[int]:
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(_children(pid))
    return seen


def _ns_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def mounts_under(directory: Path) -> list[str]:
    """Mount points in this mount namespace at or below ``directory``, deepest first."""
    prefix = str(directory)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def nsfs_mounts_under(directory: Path) -> list[str]:
    prefix = str(directory)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point = left.split(" ")[4]
        if right.split(" ")[0] == "nsfs" and point.startswith(prefix + "/"):
            found.append(point)
    return found


def propagation(path: Path) -> str:
    """Propagation of the mount that holds ``path`` (findmnt's word: shared, private, ...)."""
    out = run(["findmnt", "-n", "-o", "PROPAGATION", "--target", str(path)], timeout=10)
    return out.stdout.split("\n", 1)[0].strip()


def busybox_tar(dest: Path) -> Path:
    """A minimal image: static busybox and one symlink per applet (no registry is reachable)."""
    applets = run([BUSYBOX, "--list"], timeout=10).stdout.split()
    with tarfile.open(dest, "w") as tar:
        for d, mode in (
            ("bin", 0o755),
            ("etc", 0o755),
            ("root", 0o700),
            ("tmp", 0o1777),
            ("proc", 0o755),
            ("sys", 0o755),
            ("dev", 0o755),
        ):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(info)
        for name, data in (
            ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", b"root:x:0:\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest


def cgroup_hierarchies() -> list[Path]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] in ("cgroup", "cgroup2"):
            point = Path(left.split(" ")[4])
            if point.is_relative_to(CGROUP_ROOT):
                found.append(point)
    return sorted(set(found)) or [CGROUP_ROOT]


def _rmdir_tree(directory: Path, timeout: float = 10) -> None:
    """Remove a cgroup and its children, deepest first; EBUSY while tasks are released."""
    if not directory.is_dir():
        return
    deadline = time.monotonic() + timeout
    children = sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for cg in [*children, directory]:
        while True:
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                    raise HostError(f"cannot remove cgroup {cg}: {e}") from e
                time.sleep(0.05)


# --------------------------------------------------------------------------- the host


class DockerHost:
    """One dockerd, started and stopped by the tests (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        live_restore: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,8}", name):
            raise HostError(f"host name {name!r}: 1-8 lowercase letters and digits")
        self.name = name
        self.workdir = workdir.absolute()
        self.live_restore = live_restore
        self.extra_args = tuple(extra_args)
        self.netns = f"{NETNS_PREFIX}{name}-{os.getpid()}"
        self.cgroup_parent = f"/{self.netns}"
        self.plugin_ids: set[str] = set()
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths
    @property
    def socket(self) -> Path:
        return self.workdir / "docker.sock"

    @property
    def log(self) -> Path:
        return self.workdir / "dockerd.log"

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
        env = dict(os.environ)
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER_CONFIG"] = str(self.workdir / "client")
        env["DOCKER"] = DOCKER
        return env

    # -- commands
    def docker(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [DOCKER, "-H", f"unix://{self.socket}", *args],
            check=check,
            timeout=timeout,
            env=self.env,
            input=input,
        )

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
            run(
                [
                    *ip,
                    "link",
                    "add",
                    UNDERLAY[0],
                    "mtu",
                    str(UNDERLAY_MTU),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    UNDERLAY[1],
                    "mtu",
                    str(UNDERLAY_MTU),
                ],
                timeout=10,
            )
            run([*ip, "addr", "add", f"{UNDERLAY_ADDR}/24", "dev", UNDERLAY[0]], timeout=10)
            for dev in UNDERLAY:
                run([*ip, "link", "set", dev, "up"], timeout=10)
        self.start(timeout)

    def start(self, timeout: float = 60) -> None:
        argv = [
            "nsenter",
            f"--net={NETNS_DIR / self.netns}",
            "--",
            DOCKERD,
            "--data-root",
            str(self.workdir / "data"),
            "--exec-root",
            str(self.workdir / "exec"),
            "-H",
            f"unix://{self.socket}",
            "--pidfile",
            str(self.workdir / "docker.pid"),
            "--config-file",
            str(self.workdir / "daemon.json"),
            "--cgroup-parent",
            self.cgroup_parent,
            "--userland-proxy=false",
            *(["--live-restore"] if self.live_restore else []),
            *self.extra_args,
        ]
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
        deadline = time.monotonic() + timeout
        while not _ping(self.socket):
            if self._proc.poll() is not None:
                raise HostError(
                    f"dockerd exited with {self._proc.returncode}; log {self.log}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise HostError(
                    f"dockerd not answering after {timeout:g}s; log {self.log}:\n{self.tail()}"
                )
            time.sleep(0.1)

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

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # -- images, swarm, plugin
    def import_busybox(self) -> None:
        tar = busybox_tar(self.workdir / "busybox.tar")
        self.docker("import", str(tar), IMAGE, timeout=120)

    def swarm_init(self) -> None:
        self.docker(
            "swarm",
            "init",
            "--advertise-addr",
            UNDERLAY_ADDR,
            "--listen-addr",
            f"{UNDERLAY_ADDR}:2377",
            timeout=120,
        )
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
        plugin_id = self.plugin_id(name)
        self.plugin_ids.add(plugin_id)
        return plugin_id

    def plugin_id(self, name: str = PLUGIN_NAME) -> str:
        pid = self.docker("plugin", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        self.plugin_ids.add(pid)
        return pid

    def plugin_socket(self, name: str = PLUGIN_NAME) -> Path:
        return PLUGIN_EXEC_ROOT / self.plugin_id(name) / "swarmnet.sock"

    def plugin_pids(self, name: str = PLUGIN_NAME) -> set[int]:
        """Processes of the managed plugin (runc puts it in cgroup /<plugin id>)."""
        plugin_id = self.plugin_id(name)
        for hierarchy in cgroup_hierarchies():
            procs = hierarchy / plugin_id / "cgroup.procs"
            if procs.is_file():
                return {int(p) for p in procs.read_text().split()}
        return set()

    def plugin_enabled(self, name: str = PLUGIN_NAME) -> bool:
        out = self.docker("plugin", "inspect", "-f", "{{.Enabled}}", name, check=False)
        return out.stdout.strip() == "true"

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
        roots = set()
        ours = _ns_id(NETNS_DIR / self.netns)
        needle = str(self.workdir)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            if needle in _cmdline(pid) or (ours and _ns_id(Path(entry.path, "ns/net")) == ours):
                roots.add(pid)
        return {p for p in _descendants(roots) if p != os.getpid() and _alive(p)}

    def _plugin_ids_on_disk(self) -> set[str]:
        root = self.workdir / "data" / "plugins"
        ids = set(self.plugin_ids)
        if root.is_dir():
            ids |= {p.name for p in root.iterdir() if _PLUGIN_ID.match(p.name)}
        return ids

    def down(self) -> None:
        """Remove everything of this host, even after a failed test. Best effort first (so
        dockerd releases what it holds), then by force."""
        if self._proc is not None and self._proc.poll() is None and _ping(self.socket):
            with contextlib.suppress(HostError):
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
        deadline = time.monotonic() + 30
        while pids := self._processes():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise HostError(f"processes of {self.netns} survive SIGKILL: {sorted(pids)}")
            time.sleep(0.05)
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
        for hierarchy in cgroup_hierarchies():
            for name in [self.cgroup_parent.lstrip("/"), *plugin_ids]:
                _rmdir_tree(hierarchy / name)
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
            for h in cgroup_hierarchies()
            for n in [self.cgroup_parent.lstrip("/"), *ids]
            if (h / n).exists()
        ]
        return {
            "processes": [f"{p}: {_cmdline(p)}" for p in sorted(self._processes())],
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
        if owner == os.getpid() or (_alive(owner) and "pytest" in _cmdline(owner)):
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
