"""What every benchmark module shares: statistics, table rows, the two drivers and their
networks, containers that hold a network open on every node, and small helpers to reach a
node's Docker API or a container's network namespace.

Conventions: samples are stored in the unit the row names (ms, Gbit/s, MB, ...). The ratio is
always ours / Docker's, of the medians (and of the p90s), whatever direction is better.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testbed.dockerd import unix_request  # noqa: E402
from testbed.multihost import IMAGE as IMAGE  # noqa: E402  (re-exported for the bench modules)
from testbed.multihost import Lab as Lab  # noqa: E402
from testbed.multihost import LabError as LabError  # noqa: E402
from testbed.multihost import Node as Node  # noqa: E402
from testbed.proc import wait_for as wait_until  # noqa: E402  (re-exported for the bench modules)

OURS = "ours"
DOCKER = "docker"


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100), as bench/convergence.py uses for p90."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values),
            "p90": percentile(values, 90), "p99": percentile(values, 99),
            "min": min(values), "max": max(values), "mean": statistics.fmean(values)}


@dataclass
class Row:
    """One line of the table. ``docker`` is None where Docker's overlay has no counterpart
    (it runs inside dockerd: no socket to call, no process to weigh)."""

    key: str
    metric: str
    unit: str
    ours: list[float] = field(default_factory=list)
    docker: list[float] | None = field(default_factory=list)
    better: str = "lower"  # or "higher"
    target: str = ""
    met: bool | None = None
    note: str = ""
    failures: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, label: str, value: float) -> None:
        samples = self.ours if label == OURS else self.docker
        if samples is None:
            raise ValueError(f"{self.key}: Docker's overlay has no counterpart")
        samples.append(value)

    def ratio(self, what: str = "median") -> float | None:
        if self.docker is None or not self.ours or not self.docker:
            return None
        d = stats(self.docker)[what]
        return stats(self.ours)[what] / d if d else None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "metric": self.metric, "unit": self.unit, "better": self.better,
                "ours": stats(self.ours),
                "docker": None if self.docker is None else stats(self.docker),
                "ratio_median": self.ratio("median"), "ratio_p90": self.ratio("p90"),
                "target": self.target, "met": self.met, "note": self.note,
                "failures": self.failures, "extra": self.extra,
                "samples": {"ours": [round(v, 4) for v in self.ours],
                            "docker": None if self.docker is None
                            else [round(v, 4) for v in self.docker]}}


def alternate(round_: int, items: Sequence[Any]) -> list[Any]:
    """Items in order on even rounds, reversed on odd ones: ABBA, so neither driver always
    runs first (right after the other has warmed caches or left work behind)."""
    return list(items) if round_ % 2 == 0 else list(reversed(items))


# --------------------------------------------------------------------------- drivers, networks


@dataclass(frozen=True)
class Driver:
    label: str  # OURS or DOCKER
    driver: str  # docker network create -d
    ipam: str | None  # --ipam-driver, None = Docker's default


@dataclass(frozen=True)
class Holder:
    """A long-running container that keeps the network present on its node."""

    node: int
    name: str
    pid: int
    ip: ipaddress.IPv4Address


@dataclass
class Net:
    driver: Driver
    name: str
    subnet: ipaddress.IPv4Network
    id: str = ""
    holders: dict[int, Holder] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # -o KEY=VALUE

    @property
    def label(self) -> str:
        return self.driver.label


def create_network(lab: Lab, net: Net) -> None:
    remove_network(lab, net.name)
    args = ["network", "create", "-d", net.driver.driver, "--attachable",
            "--subnet", str(net.subnet)]
    if net.driver.ipam:
        args += ["--ipam-driver", net.driver.ipam]
    for key, value in net.options.items():
        args += ["-o", f"{key}={value}"]
    net.id = lab.manager().docker(*args, net.name).stdout.strip()


def start_holders(lab: Lab, net: Net, nodes: Iterable[int]) -> None:
    """One ``sleep`` container per node on ``net``, named ``<net>-h<i>``: the network stays up
    on every node between runs, as on a host with other containers, and the holders are the
    ends of the ping, iperf3 and reachability measurements."""
    for i in nodes:
        node = lab.node(i)
        name = f"{net.name}-h{i}"
        node.docker("run", "-d", "--name", name, "--network", net.name, IMAGE, "sleep", "1d",
                    timeout=180)
        info = json.loads(node.docker("inspect", name).stdout)[0]
        ip = info["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        net.holders[i] = Holder(i, name, int(info["State"]["Pid"]), ipaddress.IPv4Address(ip))


def remove_services(lab: Lab, prefix: str, timeout: float = 300) -> None:
    """Remove services named ``prefix*`` and wait until their containers are gone everywhere."""
    manager = lab.manager()
    names = [s for s in manager.docker("service", "ls", "--format", "{{.Name}}").stdout.split()
             if s.startswith(prefix)]
    if not names:
        return
    manager.docker("service", "rm", *names, timeout=120)
    wait_until(f"containers of {names} gone", lambda: not any(
        service_containers(node, n) for node in lab.nodes for n in names), timeout, 0.5)


def service_containers(node: Node, service: str) -> list[str]:
    return node.docker("ps", "-aq", "--filter",
                       f"label=com.docker.swarm.service.name={service}").stdout.split()


def remove_network(lab: Lab, name: str) -> None:
    """Services and containers named ``<name>-*``, then the network (bench/convergence.py)."""
    from bench.convergence import cleanup_network

    remove_services(lab, f"{name}-")
    cleanup_network(lab, name)


# --------------------------------------------------------------------------- docker API, netns


def api_get(node: Node, path: str, query: dict[str, Any] | None = None,
            timeout: float = 30) -> Any:
    """GET on the node's Docker API (cheaper than a CLI process when polling)."""
    if query:
        path += "?" + urllib.parse.urlencode(
            {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in query.items()})
    status, body = unix_request(node.socket, "GET", path, timeout=timeout)
    if status != 200:
        raise LabError(f"GET {path} on {node.netns}: {status} {body[:200]!r}")
    return json.loads(body)


def service_tasks(lab: Lab, service: str) -> list[dict[str, Any]]:
    return list(api_get(lab.manager(), "/tasks", {"filters": {"service": [service]}}))


def in_netns(target: int | str, argv: Sequence[str]) -> list[str]:
    """argv run in a network namespace only: a container's (its pid) or a lab node's (its
    netns name). The program is the host's; only the network stack is the container's."""
    path = f"/proc/{target}/ns/net" if isinstance(target, int) else f"/run/netns/{target}"
    return ["nsenter", f"--net={path}", "--", *argv]


def node_mount_exec(node: Node, netns_path: str, argv: Sequence[str],
                    timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run argv in a network namespace that is bind-mounted inside the node's mount namespace
    (Docker's /run/docker/netns/*, the plugin's netns/*): enter dockerd's mount namespace
    first, since the mounts are not visible from ours."""
    pid = node.dockerd_pid()
    if pid is None:
        raise LabError(f"dockerd of {node.netns} is not running")
    cmd = ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", "nsenter", f"--net={netns_path}",
           "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


# --------------------------------------------------------------------------- the machine


def meminfo_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def machine() -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                  cwd=ROOT).stdout.strip()
        return ""

    cpu = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1) if m else ""
    return {"host": platform.node(), "nproc": os.cpu_count(), "cpu": cpu,
            "ram_gib": round(meminfo_total_gib(), 1), "kernel": platform.release(),
            "python": platform.python_version(),
            "docker": cmd("/usr/sbin/dockerd", "--version"),
            "iperf3": cmd("iperf3", "--version").splitlines()[0] if cmd("iperf3",
                                                                        "--version") else "",
            "commit": cmd("git", "rev-parse", "--short", "HEAD"),
            "tree_dirty": bool(cmd("git", "status", "--porcelain", "--", "plugin", "driver",
                                   "ipam"))}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    t = time.monotonic()
    log(f"{what} ...")
    yield
    log(f"{what}: {time.monotonic() - t:.1f}s (load {os.getloadavg()[0]:.2f})")


@dataclass
class Context:
    """What a benchmark module gets: the lab, the two drivers' main networks (with holders on
    every node) and the run's settings."""

    lab: Lab
    nets: dict[str, Net]  # OURS / DOCKER -> network
    plugin: str  # the managed plugin's name:tag
    quick: bool
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        return [OURS, DOCKER]
