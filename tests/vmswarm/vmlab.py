"""One swarm node inside kernel-lab: dockerd in swarm mode with the managed plugin installed.

The host's kernel has no IPVS, so service load balancing is tested under kernel-lab's
Debian kernel. Everything here runs *inside* the VM, once per boot (each step is slow
under emulation; see the timings this module records):

* a tmpfs for dockerd's data and exec roots (overlay2 cannot sit on the VM's overlay root);
* the exec root made a shared mount, as ``scripts/host-prep.sh`` does for the run
  directory: the plugin sees containers' namespaces through its ``docker-run`` mount
  (rslave), and a namespace bound there after the plugin started reaches it only when
  the host side of that mount is shared;
* dockerd in a network namespace of its own with a veth "underlay" (the e2e test bed,
  :class:`testbed.dockerhost.DockerHost`), ``swarm init``, a busybox image;
* the plugin made from ``build/plugin.tar`` (``python -m tests.vmswarm.build`` writes it on
  the host) with one ``POST /plugins/create``, what ``docker plugin create`` sends, without
  walking the bundle's files over 9p; then ``plugin set`` and ``plugin enable``.

Nothing is torn down: the VM powers off after the session. The dockerd log is copied to
``build/vmswarm/`` (the working directory is shared with the host).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.dockerd import PLUGIN_NAME, unix_post
from testbed.dockerhost import PLUGIN_EXEC_ROOT, REPO, DockerHost
from testbed.image import BUSYBOX
from testbed.proc import BedError as HostError
from testbed.proc import run, wait_for

TARBALL = REPO / "build" / "plugin.tar"
LOG_DIR = REPO / "build" / "vmswarm"
WORKDIR = Path("/run/vmswarm")
TMPFS_SIZE = "1200m"
# Our firewall marks: 0x736e in the upper 16 bits (driver/lb/model.py).
MARK_BASE, MARK_MASK = 0x736E0000, 0xFFFF0000
NFT_TABLE = "swarmnet"
API = "/v1.41"


@dataclass
class Lab:
    host: DockerHost
    plugin_id: str
    timings: dict[str, float] = field(default_factory=dict)

    # -- docker
    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return self.host.docker(*args, timeout=timeout, check=check).stdout

    def status(self) -> dict[str, Any]:
        """POST /Swarmnet.Status on the plugin's socket (what ``swarmnet status`` shows)."""
        code, body = unix_post(PLUGIN_EXEC_ROOT / self.plugin_id / "swarmnet.sock",
                               "/Swarmnet.Status", b"{}", timeout=30)  # fmt: skip
        if code != 200:
            raise HostError(f"Swarmnet.Status: HTTP {code}: {body[:500]!r}")
        out = json.loads(body)
        assert isinstance(out, dict)
        return out

    def sandbox(self, container: str) -> Path:
        key = self.docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container).strip()
        if not key:
            raise HostError(f"container {container} has no SandboxKey")
        return Path(key)

    def in_sandbox(self, container: str, *argv: str, timeout: float = 60) -> str:
        """Run a *reading* tool (ipvsadm -Ln, nft list, ip rule) in a container's namespace."""
        return run(["nsenter", f"--net={self.sandbox(container)}", "--", *argv],
                   timeout=timeout).stdout  # fmt: skip

    def exec(self, container: str, script: str, timeout: float = 120, check: bool = True) -> str:
        return self.docker("exec", container, "sh", "-c", script, timeout=timeout, check=check)

    def log_tail(self, lines: int = 40) -> str:
        return self.host.tail(lines)

    def timed(self, what: str) -> contextlib.AbstractContextManager[None]:
        return _timed(self.timings, what)


@contextlib.contextmanager
def _timed(timings: dict[str, float], what: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        timings[what] = time.monotonic() - start
        with contextlib.suppress(OSError):
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            with open(LOG_DIR / "progress.log", "a") as f:
                f.write(f"timing: {what}: {timings[what]:.1f}s\n")


# --------------------------------------------------------------------------- bring-up


def _shared_bind(path: Path) -> None:
    """Make ``path`` a shared mount of its own (as ``ip netns`` does for /run/netns)."""
    path.mkdir(parents=True, exist_ok=True)
    if run(["mountpoint", "-q", str(path)], check=False, timeout=10).returncode != 0:
        run(["mount", "--bind", str(path), str(path)], timeout=10)
    run(["mount", "--make-shared", str(path)], timeout=10)


def create_plugin(host: DockerHost, tarball: Path, name: str = PLUGIN_NAME) -> None:
    """``docker plugin create NAME DIR`` without the CLI's walk over DIR: the CLI sends
    DIR as an uncompressed tar of config.json + rootfs/, which is what ``tarball`` is."""
    if not tarball.is_file():
        raise HostError(f"{tarball} is missing: run `python -m tests.vmswarm.build` on the host")
    code, body = unix_post(
        host.socket,
        f"{API}/plugins/create?name={name}",
        tarball.read_bytes(),
        {"Content-Type": "application/x-tar"},
        timeout=900,
    )
    if code != 204:
        raise HostError(f"plugin create: HTTP {code}: {body[:500]!r}")


def up(timings: dict[str, float], workdir: Path = WORKDIR) -> Lab:
    """dockerd + swarm + busybox + the enabled plugin; ``timings`` gets each step's seconds."""
    if os.geteuid() != 0:
        raise HostError("the vmswarm lab runs as root inside kernel-lab")
    # xt_ipvs: Docker's ingress sandbox SNATs with `-m ipvs`.
    for mod in ("ip_vs", "ip_vs_rr", "nf_tables", "xt_ipvs"):
        run(["modprobe", mod], timeout=60)
    workdir.mkdir(parents=True, exist_ok=True)
    if run(["mountpoint", "-q", str(workdir)], check=False, timeout=10).returncode != 0:
        run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(workdir)])
    host = DockerHost(workdir, "vm")
    # Before dockerd and the plugin start: mounts made later under a private exec root
    # never reach the plugin's docker-run mount.
    _shared_bind(workdir / "exec")
    _shared_bind(host.run_dir)
    host.state_dir.mkdir(parents=True, exist_ok=True)
    with _timed(timings, "dockerd up"):
        host.up(timeout=240)
    with _timed(timings, "swarm init"):
        host.swarm_init()
    with _timed(timings, "busybox import"):
        host.import_busybox()
    with _timed(timings, "plugin create"):
        create_plugin(host, TARBALL)
    settings = {
        "state.source": str(host.state_dir),
        "run.source": str(host.run_dir),
        "docker-run.source": str(workdir / "exec"),
        "docker-socket.source": str(host.socket),
        "LOG_LEVEL": "debug",
    }
    host.docker("plugin", "set", PLUGIN_NAME, *(f"{k}={v}" for k, v in settings.items()))
    with _timed(timings, "plugin enable"):
        try:
            host.docker("plugin", "enable", "--timeout", "240", PLUGIN_NAME, timeout=300)
        except HostError as e:
            raise HostError(f"{e}\ndockerd log:\n{host.tail(60)}") from e
    plugin_id = host.plugin_id()
    return Lab(host, plugin_id, timings)


def save_log(lab: Lab | None) -> None:
    if lab is None or not lab.host.log.is_file():
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lab.host.log, LOG_DIR / "dockerd.log")


# --------------------------------------------------------------------------- workloads

# Each task serves its own hostname (the container's short ID) on port 80.
HTTPD = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"


@dataclass(frozen=True)
class Task:
    container_id: str
    hostname: str
    ip: ipaddress.IPv4Address


def create_network(lab: Lab, name: str, *opts: str) -> str:
    return lab.docker(
        "network", "create", "-d", PLUGIN_NAME, "--attachable", *opts, name, timeout=180
    ).strip()


def start_http_service(lab: Lab, name: str, network: str | None, replicas: int, *opts: str) -> None:
    """A busybox httpd service (``--detach``: see :func:`wait_tasks`); no ``network``: only
    Docker's ingress (with ``--publish``)."""
    net = ["--network", network] if network else []
    lab.docker(
        "service", "create", "--detach", "--no-resolve-image", "--name", name, *net,
        "--replicas", str(replicas), *opts, "busybox:latest", "sh", "-c", HTTPD, timeout=180,
    )  # fmt: skip


def service_tasks(lab: Lab, service: str, network: str) -> list[Task]:
    ids = lab.docker(
        "ps", "-q", "--no-trunc", "--filter", f"label=com.docker.swarm.service.name={service}",
        "--filter", "status=running",
    ).split()  # fmt: skip
    tasks = []
    for cid in ids:
        info = json.loads(lab.docker("inspect", cid))[0]
        net = info["NetworkSettings"]["Networks"].get(network) or {}
        if not net.get("IPAddress"):
            continue
        tasks.append(Task(cid, info["Config"]["Hostname"], ipaddress.IPv4Address(net["IPAddress"])))
    return sorted(tasks, key=lambda t: t.ip)


def wait_tasks(
    lab: Lab, service: str, network: str, replicas: int, timeout: float = 300
) -> list[Task]:
    """Poll until exactly ``replicas`` tasks of ``service`` run with an address on ``network``."""

    def ready() -> list[Task] | None:
        tasks = service_tasks(lab, service, network)
        return tasks if len(tasks) == replicas else None

    try:
        tasks = wait_for(f"{replicas} running tasks of {service}", ready, timeout, interval=1)
    except HostError as e:
        ps = lab.docker("service", "ps", "--no-trunc", service, check=False)
        raise HostError(f"{e}\n{ps}\ndockerd log:\n{lab.log_tail()}") from e
    assert isinstance(tasks, list)
    return tasks


def run_client(lab: Lab, name: str, network: str) -> str:
    return lab.docker(
        "run", "-d", "--name", name, "--network", network, "busybox:latest", "sleep", "86400",
        timeout=180,
    ).strip()  # fmt: skip


@dataclass(frozen=True)
class Service:
    name: str
    network: str
    network_id: str
    tasks: list[Task]
    vip: ipaddress.IPv4Address | None
    client: str  # a container on the same network


@dataclass(frozen=True)
class Workloads:
    """What every test module uses, started at once so swarm works on all of it together
    (each step alone is slow under emulation)."""

    web: Service  # 3 replicas, VIP, our IPAM, published on 8080
    webd: Service  # 3 replicas, VIP, Docker's default IPAM
    rr: Service  # 2 replicas, dnsrr, our IPAM (web's network and client)


OWN_NET, DEFAULT_NET = "snweb", "sndflt"
OWN_CLIENT, DEFAULT_CLIENT = "webclient", "dfltclient"


def start_workloads(lab: Lab, timeout: float = 400) -> Workloads:
    with lab.timed("workloads: 2 networks created"):
        own = create_network(lab, OWN_NET, "--ipam-driver", PLUGIN_NAME)
        dflt = create_network(lab, DEFAULT_NET)
    with lab.timed("workloads: 3 services created (detached)"):
        start_http_service(lab, "web", OWN_NET, 3, "--publish", "8080:80")
        start_http_service(lab, "webd", DEFAULT_NET, 3)
        start_http_service(lab, "webrr", OWN_NET, 2, "--endpoint-mode", "dnsrr")
    pairs = [(OWN_CLIENT, OWN_NET), (DEFAULT_CLIENT, DEFAULT_NET)]
    with lab.timed("workloads: 2 clients running"), ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pair: run_client(lab, *pair), pairs))
    with lab.timed("workloads: 8 tasks running"):
        web = wait_tasks(lab, "web", OWN_NET, 3, timeout)
        webd = wait_tasks(lab, "webd", DEFAULT_NET, 3, timeout)
        rr = wait_tasks(lab, "webrr", OWN_NET, 2, timeout)
    return Workloads(
        web=Service("web", OWN_NET, own, web, service_vip(lab, "web", own), OWN_CLIENT),
        webd=Service(
            "webd", DEFAULT_NET, dflt, webd, service_vip(lab, "webd", dflt), DEFAULT_CLIENT
        ),
        rr=Service("webrr", OWN_NET, own, rr, None, OWN_CLIENT),
    )


def service_vip(lab: Lab, service: str, network_id: str) -> ipaddress.IPv4Address:
    vips = json.loads(lab.docker("service", "inspect", "-f", "{{json .Endpoint.VirtualIPs}}",
                                 service))  # fmt: skip
    for v in vips or []:
        if v.get("NetworkID") == network_id:
            return ipaddress.IPv4Interface(v["Addr"]).ip
    raise HostError(f"service {service} has no VIP on network {network_id}: {vips}")


def resolve(lab: Lab, client: str, name: str) -> set[ipaddress.IPv4Address]:
    """A-record addresses of ``name`` from the client's embedded DNS (busybox nslookup)."""
    out = lab.exec(client, f"nslookup {name} 127.0.0.11", check=False)
    # "Address: 127.0.0.11:53" is the server; answers have no port.
    found = re.findall(r"^Address:\s*(\d+\.\d+\.\d+\.\d+)\s*$", out, re.M)
    return {ipaddress.IPv4Address(a) for a in found}


def fetch_many(lab: Lab, client: str, url: str, count: int) -> list[str]:
    """``count`` HTTP GETs of ``url`` from ``client``, each on a new connection; the bodies
    (a task's hostname) in order, "" for a failed fetch."""
    # busybox 1.35's wget crashes (SIGSEGV) with -T, hence timeout(1).
    script = f"for i in $(seq {count}); do timeout 5 wget -q -O - {url} 2>/dev/null || echo; done"
    out = lab.exec(client, script, timeout=60 + 5 * count)
    lines = out.split("\n")[:count]
    return [line.strip() for line in lines] + [""] * (count - len(lines))


# --------------------------------------------------------------------------- kernel state


def our_ipvs_services(lab: Lab, container: str) -> dict[int, set[str]]:
    """fwmark -> real-server addresses of the IPVS services of ours in a container's netns."""
    out = lab.in_sandbox(container, "ipvsadm", "-Ln")
    services: dict[int, set[str]] = {}
    current: int | None = None
    for line in out.splitlines():
        m = re.match(r"^FWM\s+(\d+)\s", line)
        if m:
            mark = int(m.group(1))
            current = mark if mark & MARK_MASK == MARK_BASE else None
            if current is not None:
                services[current] = set()
            continue
        if re.match(r"^(TCP|UDP|SCTP)\s", line):
            current = None
            continue
        m = re.match(r"^\s+->\s+(\d+\.\d+\.\d+\.\d+)", line)
        if m and current is not None:
            services[current].add(m.group(1))
    return services


def our_nft_tables(lab: Lab, container: str) -> list[str]:
    out = lab.in_sandbox(container, "nft", "list", "tables")
    return [line for line in out.splitlines() if line.split()[-1:] == [NFT_TABLE]]


def our_rules(lab: Lab, container: str) -> list[str]:
    """Policy rules that select our fwmarks (``ip rule`` prints them as fwmark 0x736e...)."""
    out = lab.in_sandbox(container, "ip", "rule", "show")
    return [line for line in out.splitlines() if "0x736e" in line]


def lb_services(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Service name -> its entry in the status's LoadBalancing section."""
    found: dict[str, dict[str, Any]] = {}
    for net in (status.get("LoadBalancing") or {}).get("Networks", []):
        for svc in net.get("Services", []):
            found[svc.get("Name", "")] = {**svc, "NetworkID": net.get("NetworkID")}
    return found


def node_wget(lab: Lab, url: str, count: int) -> list[str]:
    """GETs from the node itself (dockerd's network namespace), as a client outside swarm."""
    out = []
    for _ in range(count):
        proc = lab.host.in_netns(BUSYBOX, "timeout", "5", BUSYBOX, "wget", "-q", "-O", "-", url,
                                 check=False, timeout=30)  # fmt: skip
        out.append(proc.stdout.strip() if proc.returncode == 0 else "")
    return out
