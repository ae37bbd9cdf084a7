"""Issue 4 end to end: the real managed plugin on every node of a 3-node swarm lab, with etcd.

One lab and one plugin install for the whole module (about 4 minutes in all on a 2-core
machine, plus `make plugin` when the bundle is stale). The tests run in file order and share the
networks ``ours`` (our driver and our IPAM) and ``dflt`` (our driver, Docker's default IPAM) and
the service ``web`` (6 tasks, two per node, on ``ours``); each test leaves them as it found them.

What the kernel holds is read where the plugin programs it: the per-network namespace
``<run>/netns/sn-<network id[:12]>`` under the node's plugin ``run`` mount source. That bind
mount exists only in the node's mount namespace, so it is opened through the node's dockerd
(``/proc/<dockerd pid>/root/...``). Node *i*'s VTEP is its lab address.

Logs: ``<lab workdir>/logs/node<i>.log`` (dockerd and the plugin's output) and ``etcd.log``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import NetNS

from tests.lab.fixtures import plugin_build
from tests.lab.lab import ETCD, IMAGE, Lab, Node, netns_pids

pytestmark = pytest.mark.e2e

PLUGIN = "swarmnet-overlay:latest"
PEER_TTL = 5  # seconds; small, so a dead node's entries go quickly
REPO = Path(__file__).resolve().parents[2]
PEERS = "/swarmnet/v1/peers/"
NODES = "/swarmnet/v1/nodes/"
VNIS = "/swarmnet/v1/vni"
OUR_POOLS = ipaddress.ip_network("198.18.0.0/15")  # our IPAM's DEFAULT_ADDR_POOLS
SWARM_POOLS = ipaddress.ip_network("10.0.0.0/8")  # Docker's default for swarm networks
DOCKER_VNI_MIN = 4096  # Docker's overlay allocates from here; ours stays below (VNI_RANGE)


# --------------------------------------------------------------------------- plumbing


def wait_for(cond: Callable[[], bool], *, what: str, timeout: float = 60,
             interval: float = 0.3) -> float:
    """Seconds until ``cond()`` held; AssertionError naming ``what`` on timeout."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


@dataclass(frozen=True)
class Net:
    name: str
    id: str


@dataclass(frozen=True)
class Endpoint:
    """A container's endpoint on one network, as its node's dockerd reports it."""

    node: int
    container: str
    name: str
    endpoint_id: str
    ip: str
    mac: str


@dataclass(frozen=True)
class Entries:
    """Remote peers programmed on a network's vxlan0 on one node."""

    fdb: frozenset[tuple[str, str]]  # (MAC, VTEP)
    neigh: frozenset[tuple[str, str]]  # (IP, MAC)


def make_network(lab: Lab, name: str, *, driver: str = PLUGIN, ipam: str | None = None) -> Net:
    args = ["network", "create", "-d", driver, "--attachable"]
    if ipam:
        args += ["--ipam-driver", ipam]
    net_id = lab.node(1).docker(*args, name).stdout.strip()
    return Net(name, net_id)


def remove_network(lab: Lab, net: Net) -> None:
    # Workers detach asynchronously: the swarm refuses the removal until they have.
    wait_for(lambda: lab.node(1).docker("network", "rm", net.name, check=False).returncode == 0,
             what=f"docker network rm {net.name}", timeout=30)


def endpoints(lab: Lab, network: str) -> list[Endpoint]:
    """Every container endpoint on ``network`` on the running nodes."""
    found = []
    for node in lab.nodes:
        if not node.is_running():
            continue
        out = node.docker("network", "inspect", network, "--format", "{{json .Containers}}",
                          check=False)
        if out.returncode != 0:
            continue  # the network is not instantiated on this node
        for cid, c in (json.loads(out.stdout) or {}).items():
            found.append(Endpoint(node.index, cid, c["Name"], c["EndpointID"],
                                  c["IPv4Address"].split("/")[0], c["MacAddress"]))
    return sorted(found, key=lambda e: (e.node, e.name))


def run_container(lab: Lab, node: int, name: str, network: str) -> Endpoint:
    lab.node(node).docker("run", "-d", "--name", name, "--network", network, IMAGE,
                          "sleep", "1d", timeout=120)
    return next(e for e in endpoints(lab, network) if e.name == name)


def remove_containers(lab: Lab, *names: str) -> None:
    for node in lab.nodes:
        if node.is_running():
            node.docker("rm", "-f", *names, check=False)


def unreachable(lab: Lab, src: Endpoint, ips: list[str]) -> list[str]:
    """The addresses ``src`` gets no ping reply from (two tries each)."""
    if not ips:
        return []
    script = ('for ip in "$@"; do ping -c1 -W2 "$ip" >/dev/null || ping -c1 -W2 "$ip" >/dev/null'
              ' || echo "$ip"; done')
    out = lab.node(src.node).docker("exec", src.container, "sh", "-c", script, "sh", *ips,
                                    timeout=120)
    return out.stdout.split()


def all_pairs_unreachable(lab: Lab, eps: list[Endpoint]) -> dict[str, list[str]]:
    failures = {}
    for ep in eps:
        bad = unreachable(lab, ep, [o.ip for o in eps if o.ip != ep.ip])
        if bad:
            failures[f"node{ep.node}/{ep.name}/{ep.ip}"] = bad
    return failures


def assert_all_reach(lab: Lab, eps: list[Endpoint], net: Net | None = None) -> None:
    """Every endpoint pings every other; on failure, say what the kernel held (``net``: one of
    ours, whose namespaces to show)."""
    failures = all_pairs_unreachable(lab, eps)
    if failures:
        raise AssertionError(f"unreachable: {failures}\n{diagnose(lab, eps, net)}")


def diagnose(lab: Lab, eps: list[Endpoint], net: Net | None) -> str:
    """What the containers and, for our networks, the per-network namespaces hold."""
    lines = [f"(logs in {lab.logs})"]
    for ep in eps:
        node = lab.node(ep.node)
        if node.is_running():
            out = node.docker("exec", ep.container, "sh", "-c", "ip -br addr; ip neigh",
                              check=False)
            lines.append(f"node{ep.node}/{ep.name}: {out.stdout.strip()} {out.stderr.strip()}")
    for node in lab.nodes:
        if net is None or not node.is_running():
            continue
        path = plugin_netns_dir(node) / f"sn-{net.id[:12]}"
        for cmd in (["ip", "-br", "-d", "link"], ["bridge", "fdb", "show"],
                    ["ip", "neigh", "show", "dev", "vxlan0"]):
            out = subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True,
                                 text=True, timeout=30)
            lines.append(f"node{node.index} {' '.join(cmd)}:\n{out.stdout}{out.stderr}")
    return "\n".join(lines)


def resolve(lab: Lab, src: Endpoint, name: str) -> set[str]:
    """IPv4 answers of Docker's embedded DNS to ``nslookup name`` inside ``src``."""
    out = lab.node(src.node).docker("exec", src.container, "nslookup", name, check=False).stdout
    # The server line is "Address: 127.0.0.11:53"; answers are bare addresses.
    return set(re.findall(r"^Address:\s*([0-9.]+)\s*$", out, re.M))


# -- services


def create_service(lab: Lab, name: str, networks: list[str], replicas: int, per_node: int,
                   *extra: str) -> str:
    args = ["service", "create", "-d", "--name", name, "--replicas", str(replicas),
            "--replicas-max-per-node", str(per_node), "--no-resolve-image"]
    for network in networks:
        args += ["--network", network]
    lab.node(1).docker(*args, *extra, IMAGE, "sleep", "1d")
    wait_tasks(lab, name, replicas)
    return name


def wait_tasks(lab: Lab, service: str, count: int, timeout: float = 120) -> None:
    """``count`` tasks Running and exactly ``count`` of its containers up on the nodes."""
    manager = lab.manager()

    def ready() -> bool:
        states = manager.docker("service", "ps", service, "--filter", "desired-state=running",
                                "--format", "{{.CurrentState}}").stdout.split("\n")
        if sum(s.startswith("Running") for s in states) != count:
            return False
        up = 0
        for node in lab.nodes:
            if node.is_running():
                up += len(node.docker("ps", "-q", "--filter",
                                      f"label=com.docker.swarm.service.name={service}"
                                      ).stdout.split())
        return up == count

    wait_for(ready, what=f"{count} {service} tasks running", timeout=timeout)


def tasks_of(eps: list[Endpoint], service: str) -> list[Endpoint]:
    return [e for e in eps if e.name.startswith(f"{service}.")]


def remove_service(lab: Lab, service: str) -> None:
    lab.manager().docker("service", "rm", service, check=False)

    def gone() -> bool:
        return all(not n.docker("ps", "-aq", "--filter",
                                f"label=com.docker.swarm.service.name={service}").stdout.split()
                   for n in lab.nodes if n.is_running())

    wait_for(gone, what=f"{service}'s containers to go", timeout=60)


# -- the kernel and etcd


def plugin_netns_dir(node: Node) -> Path:
    pid = node.dockerd_pid()
    assert pid is not None, f"{node} is not running"
    return Path(f"/proc/{pid}/root{node.plugin_run_source}/netns")


def kernel_entries(node: Node, net_id: str) -> Entries | None:
    """FDB and neighbour entries of ``vxlan0`` in the network's namespace; None if the node
    has no namespace for the network."""
    path = plugin_netns_dir(node) / f"sn-{net_id[:12]}"
    if not path.exists():
        return None
    with NetNS(str(path), flags=0) as ns:
        index = ns.link_lookup(ifname="vxlan0")
        assert index, f"{node}: network {net_id[:12]} has a namespace but no vxlan0"
        fdb = frozenset((m.get("lladdr"), m.get("dst")) for m in ns.fdb("dump")
                        if m["ifindex"] == index[0] and m.get("dst"))
        neigh = frozenset((m.get("dst"), m.get("lladdr"))
                          for m in ns.neigh("dump", family=socket.AF_INET)
                          if m["ifindex"] == index[0])
    return Entries(fdb, neigh)


def expected_entries(lab: Lab, node: int, eps: list[Endpoint]) -> Entries:
    remote = [e for e in eps if e.node != node]
    return Entries(frozenset((e.mac, str(lab.node(e.node).address)) for e in remote),
                   frozenset((e.ip, e.mac) for e in remote))


def etcd_get(lab: Lab, prefix: str) -> dict[str, bytes]:
    out = lab.etcdctl("get", "--prefix", prefix, "-w", "json").stdout
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
            for kv in json.loads(out).get("kvs", [])}


def published(lab: Lab, net_id: str) -> dict[str, tuple[str, str, str]]:
    """Endpoint ID -> (IP, MAC, VTEP) as published in etcd for the network."""
    records = {}
    for key, raw in etcd_get(lab, f"{PEERS}{net_id}/").items():
        rec = json.loads(raw)
        records[key.rsplit("/", 1)[1]] = (rec["ip"], rec["mac"], rec["vtep"])
    return records


def convergence_problems(lab: Lab, net: Net) -> tuple[list[Endpoint], list[str]]:
    """Compare every running node's kernel, and etcd, with the endpoints dockerd reports."""
    eps = endpoints(lab, net.name)
    problems = []
    for node in lab.nodes:
        if not node.is_running():
            continue
        have = kernel_entries(node, net.id)
        if have is None:
            if any(e.node == node.index for e in eps):
                problems.append(f"node{node.index}: no namespace for {net.name}")
            continue
        want = expected_entries(lab, node.index, eps)
        if have != want:
            problems.append(
                f"node{node.index}: fdb extra {sorted(have.fdb - want.fdb)} missing "
                f"{sorted(want.fdb - have.fdb)}; neigh extra {sorted(have.neigh - want.neigh)} "
                f"missing {sorted(want.neigh - have.neigh)}")
    want_pub = {e.endpoint_id: (e.ip, e.mac, str(lab.node(e.node).address)) for e in eps}
    have_pub = published(lab, net.id)
    if have_pub != want_pub:
        problems.append(f"etcd: extra {sorted(set(have_pub.items()) - set(want_pub.items()))} "
                        f"missing {sorted(set(want_pub.items()) - set(have_pub.items()))}")
    return eps, problems


def wait_converged(lab: Lab, net: Net, timeout: float = 30) -> list[Endpoint]:
    """Wait until every node's FDB/neighbour entries and etcd match exactly the endpoints the
    dockerds report; return those endpoints."""
    deadline = time.monotonic() + timeout
    while True:
        eps, problems = convergence_problems(lab, net)
        if not problems:
            return eps
        if time.monotonic() > deadline:
            raise AssertionError(f"{net.name} not converged after {timeout:g}s: {problems} "
                                 f"(endpoints {eps}; logs in {lab.logs})")
        time.sleep(0.5)


def our_links(node: Node) -> list[str]:
    """Links with our prefix in the node's own namespace (there should be none at rest: the
    container ends are moved into containers, the rest lives in per-network namespaces)."""
    with NetNS(node.netns, flags=0) as ns:
        names = [link.get("ifname") for link in ns.link("dump")]
    return sorted(n for n in names if n and n.startswith("sn"))


def plugin_enabled(node: Node) -> bool:
    out = node.docker("plugin", "inspect", "-f", "{{.Enabled}}", PLUGIN)
    return out.stdout.strip() == "true"


def log_size(node: Node) -> int:
    return node.log.stat().st_size


def log_since(node: Node, offset: int) -> str:
    with node.log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


class Etcd:
    """Stop and start the lab's etcd server (same arguments and data directory)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.argv: list[str] = []

    def pid(self) -> int | None:
        for pid in netns_pids(self.lab.fabric_netns):
            try:
                if os.readlink(f"/proc/{pid}/exe") == ETCD:
                    return pid
            except OSError:
                continue
        return None

    def stop(self) -> None:
        pid = self.pid()
        assert pid is not None, "etcd is not running"
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        self.argv = [os.fsdecode(a) for a in raw.split(b"\0")[:-1]]
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: self.pid() is None, what="etcd to exit", timeout=15, interval=0.1)
        if self.lab._etcd is not None:  # reap it
            self.lab._etcd.wait(timeout=10)
            self.lab._etcd = None

    def start(self) -> None:
        if self.pid() is not None:
            return
        assert self.argv, "start() before stop()"
        fabric = self.lab.fabric_netns
        self.lab._etcd = self.lab._spawn(["ip", "netns", "exec", fabric, *self.argv],
                                         log=self.lab.logs / "etcd.log",
                                         cgroup=self.lab.cgroups.tracking / fabric / "etcd")
        self.lab._wait_etcd(60)


# --------------------------------------------------------------------------- fixtures


def plugin_bundle(lab: Lab) -> Path:
    """build/plugin, made or remade by `make plugin` when a source changed. `make plugin` needs
    a dockerd for `docker build`: node 1's does it."""
    stale = subprocess.run(["make", "-C", str(REPO), "-q", "plugin"],
                           capture_output=True).returncode != 0
    if stale or plugin_build() is None:
        out = subprocess.run(["make", "-C", str(REPO), "plugin"], env=lab.node(1).env,
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            pytest.fail(f"make plugin failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    build = plugin_build()
    assert build is not None
    return build


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    lab = lab_factory(nodes=3)
    yield lab
    # Free the machine for the next module now; lab_factory checks for leftovers at the end.
    lab.down()


@pytest.fixture(scope="module")
def plugin(lab: Lab) -> str:
    lab.install_plugin(plugin_bundle(lab), PLUGIN, {"PEER_TTL": str(PEER_TTL)})
    return PLUGIN


@pytest.fixture(scope="module")
def ours(lab: Lab, plugin: str) -> Net:
    """Our driver with our IPAM."""
    return make_network(lab, "ours", ipam=PLUGIN)


@pytest.fixture(scope="module")
def dflt(lab: Lab, plugin: str) -> Net:
    """Our driver with Docker's default IPAM."""
    return make_network(lab, "dflt")


@pytest.fixture(scope="module")
def web(lab: Lab, ours: Net) -> str:
    """6 tasks on ``ours``, two per node, VIP mode."""
    return create_service(lab, "web", [ours.name], 6, 2)


@pytest.fixture
def cleanup(lab: Lab) -> Iterator[list[str]]:
    """Container names to remove after the test, on whichever node they are."""
    names: list[str] = []
    yield names
    if names:
        remove_containers(lab, *names)


# --------------------------------------------------------------------------- services


@pytest.mark.parametrize("ipam", ["swarmnet-ipam", "default-ipam"])
def test_six_tasks_over_three_nodes_all_ping_each_other(
        lab: Lab, request: pytest.FixtureRequest, ipam: str) -> None:
    if ipam == "swarmnet-ipam":
        net, pools = request.getfixturevalue("ours"), OUR_POOLS
        service = request.getfixturevalue("web")
    else:
        net, pools = request.getfixturevalue("dflt"), SWARM_POOLS
        service = create_service(lab, "pingd", [net.name], 6, 2)
    try:
        driver = lab.node(1).docker("network", "inspect", "-f", "{{.Driver}} {{.IPAM.Driver}}",
                                    net.name).stdout.split()
        assert driver == [PLUGIN, PLUGIN if ipam == "swarmnet-ipam" else "default"]
        tasks = tasks_of(wait_converged(lab, net), service)
        per_node = {n.index: sum(1 for t in tasks if t.node == n.index) for n in lab.nodes}
        assert per_node == {1: 2, 2: 2, 3: 2}, per_node
        assert len({t.ip for t in tasks}) == 6
        assert all(ipaddress.ip_address(t.ip) in pools for t in tasks), tasks
        assert_all_reach(lab, tasks, net)
    finally:
        if ipam == "default-ipam":
            remove_service(lab, service)


def test_dns_tasks_name_lists_every_task_in_vip_mode(lab: Lab, ours: Net, web: str) -> None:
    tasks = tasks_of(endpoints(lab, ours.name), web)
    assert len(tasks) == 6
    vips = json.loads(lab.node(1).docker("service", "inspect", "-f",
                                         "{{json .Endpoint.VirtualIPs}}", web).stdout)
    vip = {v["Addr"].split("/")[0] for v in vips if v["NetworkID"] == ours.id}
    assert len(vip) == 1 and not vip & {t.ip for t in tasks}, vips
    # Asked from a task on every node: each node's embedded DNS knows the remote tasks too.
    # (No IPVS on this kernel: the VIP resolves but does not load-balance, so only DNS is
    # checked for it.)
    for probe in [next(t for t in tasks if t.node == n.index) for n in lab.nodes]:
        wait_for(lambda p=probe: resolve(lab, p, f"tasks.{web}") == {t.ip for t in tasks},
                 what=f"tasks.{web} from node{probe.node} to list all 6 task IPs", timeout=20)
        assert resolve(lab, probe, web) == vip


def test_dns_in_dnsrr_mode_lists_every_task(lab: Lab, ours: Net) -> None:
    service = create_service(lab, "rr", [ours.name], 3, 1, "--endpoint-mode", "dnsrr")
    try:
        tasks = tasks_of(wait_converged(lab, ours), service)
        assert sorted(t.node for t in tasks) == [1, 2, 3]
        assert json.loads(lab.node(1).docker("service", "inspect", "-f",
                                             "{{json .Endpoint.VirtualIPs}}", service
                                             ).stdout) in (None, [])
        ips = {t.ip for t in tasks}
        for probe in tasks:
            wait_for(lambda p=probe: resolve(lab, p, service) == ips
                     and resolve(lab, p, f"tasks.{service}") == ips,
                     what=f"{service} and tasks.{service} from node{probe.node} to list "
                          f"{sorted(ips)}", timeout=20)
        assert_all_reach(lab, tasks, ours)
    finally:
        remove_service(lab, service)


def test_attachable_containers_on_different_nodes_ping_each_other(
        lab: Lab, ours: Net, cleanup: list[str]) -> None:
    names = [f"att{n.index}" for n in lab.nodes]
    cleanup += names
    mine = [run_container(lab, i, name, ours.name) for i, name in enumerate(names, 1)]
    wait_converged(lab, ours)
    assert_all_reach(lab, mine, ours)
    # Leave withdraws them: their entries go from every node and from etcd.
    remove_containers(lab, *names)
    cleanup.clear()
    eps = wait_converged(lab, ours)
    assert not {e.ip for e in mine} & {e.ip for e in eps}


def test_scaling_down_and_up_converges_and_removes_stale_entries(
        lab: Lab, ours: Net, web: str) -> None:
    before = tasks_of(wait_converged(lab, ours), web)
    assert len(before) == 6
    manager = lab.node(1)
    manager.docker("service", "scale", "-d", f"{web}=2")
    wait_tasks(lab, web, 2)
    eps = wait_converged(lab, ours)
    removed = [t for t in before if t.endpoint_id not in {e.endpoint_id for e in eps}]
    assert len(removed) == 4 and len(tasks_of(eps, web)) == 2
    gone_macs, gone_ips = {t.mac for t in removed}, {t.ip for t in removed}
    for node in lab.nodes:
        entries = kernel_entries(node, ours.id)
        if entries is not None:
            assert not {m for m, _ in entries.fdb} & gone_macs, (node, entries)
            assert not {ip for ip, _ in entries.neigh} & gone_ips, (node, entries)
    assert not set(published(lab, ours.id)) & {t.endpoint_id for t in removed}

    manager.docker("service", "scale", "-d", f"{web}=6")
    wait_tasks(lab, web, 6)
    tasks = tasks_of(wait_converged(lab, ours), web)
    assert sorted(t.node for t in tasks) == [1, 1, 2, 2, 3, 3]
    assert_all_reach(lab, tasks, ours)


def test_side_by_side_with_dockers_builtin_overlay(lab: Lab, ours: Net) -> None:
    builtin = make_network(lab, "bov", driver="overlay")
    service = "duo"
    try:
        create_service(lab, service, [ours.name, builtin.name], 3, 1)
        on_ours = tasks_of(wait_converged(lab, ours), service)
        on_builtin = tasks_of(endpoints(lab, builtin.name), service)
        assert sorted(t.node for t in on_ours) == sorted(t.node for t in on_builtin) == [1, 2, 3]
        assert_all_reach(lab, on_ours, ours)
        assert_all_reach(lab, on_builtin)
        # Both drivers run VXLAN on UDP 4789 in the same node namespaces, on different VNIs.
        ours_vni = json.loads(etcd_get(lab, VNIS)[VNIS])["by_network"][ours.id]
        opts = json.loads(lab.node(1).docker("network", "inspect", "-f", "{{json .Options}}",
                                             builtin.name).stdout)
        builtin_vnis = [int(v) for v in
                        opts["com.docker.network.driver.overlay.vxlanid_list"].split(",")]
        assert ours_vni < DOCKER_VNI_MIN <= min(builtin_vnis), (ours_vni, builtin_vnis)
    finally:
        remove_service(lab, service)
        remove_network(lab, builtin)


def test_network_rm_leaves_nothing_behind_on_any_node(lab: Lab, plugin: str,
                                                      cleanup: list[str]) -> None:
    keys_before = set(etcd_get(lab, "/swarmnet/"))
    net = make_network(lab, "gone", ipam=PLUGIN)
    names = [f"gone{n.index}" for n in lab.nodes]
    cleanup += names
    for i, name in enumerate(names, 1):
        run_container(lab, i, name, net.name)
    wait_converged(lab, net)
    # There was something to remove: two remote peers on every node, keys in etcd.
    for node in lab.nodes:
        entries = kernel_entries(node, net.id)
        assert entries is not None and len(entries.fdb) == len(entries.neigh) == 2, entries
    assert len(published(lab, net.id)) == 3
    assert net.id in json.loads(etcd_get(lab, VNIS)[VNIS])["by_network"]

    remove_containers(lab, *names)
    cleanup.clear()
    remove_network(lab, net)

    def leftovers() -> list[str]:
        found = []
        for node in lab.nodes:
            ns_files = sorted(p.name for p in plugin_netns_dir(node).iterdir()
                              if p.name == f"sn-{net.id[:12]}")
            found += [f"node{node.index}: namespace {f}" for f in ns_files]
            found += [f"node{node.index}: link {link}" for link in our_links(node)]
        keys = etcd_get(lab, "/swarmnet/")
        found += [f"etcd: {k}" for k in sorted(set(keys) - keys_before)]
        found += [f"etcd: {k} names it" for k, v in keys.items() if net.id.encode() in v]
        found += [f"etcd: {k}" for k in keys if net.id in k]
        return found

    try:
        wait_for(lambda: not leftovers(), what="the network to leave nothing behind", timeout=30)
    except AssertionError as e:
        raise AssertionError(f"{e}: {leftovers()}") from None


# --------------------------------------------------------------------------- restarts, outages


def test_plugin_restart_keeps_that_nodes_containers_reachable(
        lab: Lab, ours: Net, web: str) -> None:
    tasks = tasks_of(wait_converged(lab, ours), web)
    node = lab.node(2)
    local = [t for t in tasks if t.node == 2]
    watcher = next(t for t in tasks if t.node == 1)
    node.docker("plugin", "disable", "-f", PLUGIN, timeout=120)
    disabled_at = time.monotonic()
    try:
        assert not plugin_enabled(node)
        # The data path lives in the kernel: no plugin process is needed to carry traffic.
        assert unreachable(lab, watcher, [t.ip for t in local]) == []
    finally:
        node.docker("plugin", "enable", PLUGIN, timeout=120)
    # Past the old process's lease: only a re-publish by the new one keeps node 2's endpoints.
    time.sleep(max(0.0, disabled_at + PEER_TTL + 1 - time.monotonic()))
    after = tasks_of(wait_converged(lab, ours), web)
    assert {t.endpoint_id for t in after} == {t.endpoint_id for t in tasks}, "tasks restarted"
    assert_all_reach(lab, after, ours)


def test_etcd_outage_keeps_the_data_path_and_publishes_joins_when_it_is_back(
        lab: Lab, ours: Net, dflt: Net, cleanup: list[str]) -> None:
    """Documented behaviour: programmed entries stay while etcd is down; a Join during the
    outage succeeds on its node and is published when etcd is back. Allocations in the shared
    space (our IPAM) fail with an error naming etcd."""
    n1, n2, n3 = lab.nodes
    cleanup += ["out1", "out2", "out3", "new3", "ours3"]
    before = [run_container(lab, i, f"out{i}", dflt.name) for i in (1, 2, 3)]
    e1 = before[0]
    wait_converged(lab, dflt)
    assert_all_reach(lab, before, dflt)
    etcd = Etcd(lab)
    mark = log_size(n1)
    etcd.stop()
    try:
        assert lab.etcdctl("endpoint", "health", check=False, timeout=20).returncode != 0
        time.sleep(PEER_TTL + 1)  # longer than a lease: nothing may expire while etcd is down
        assert_all_reach(lab, before, dflt)

        # A plugin restart during the outage must not drop what the kernel holds.
        n2.docker("plugin", "disable", "-f", PLUGIN, timeout=120)
        n2.docker("plugin", "enable", PLUGIN, timeout=120)
        entries = kernel_entries(n2, dflt.id)
        assert entries is not None and (e1.ip, e1.mac) in entries.neigh, entries
        assert_all_reach(lab, before, dflt)

        # A join during the outage, on a node that has the network: Docker's IPAM needs no
        # etcd, so it succeeds locally; nobody else can know it yet.
        new = run_container(lab, 3, "new3", dflt.name)
        assert unreachable(lab, e1, [new.ip]) == [new.ip], "published without etcd?"

        # Our IPAM must allocate the address in etcd: the attachment is refused.
        r = n3.docker("run", "-d", "--name", "ours3", "--network", ours.name, IMAGE,
                      "sleep", "1d", check=False, timeout=120)
        assert r.returncode != 0, r.stdout
        assert "IpamDriver.RequestAddress failed: etcd is unreachable" in log_since(n1, mark)
    finally:
        n3.docker("rm", "-f", "ours3", check=False)
        etcd.start()
    took = wait_for(lambda: unreachable(lab, e1, [new.ip]) == [], timeout=60,
                    what="the container started during the outage to become reachable")
    print(f"\nreachable {took:.1f}s after etcd was back")
    eps = wait_converged(lab, dflt)
    mine = [e for e in eps if e.name in cleanup]
    assert sorted(e.name for e in mine) == ["new3", "out1", "out2", "out3"]
    assert_all_reach(lab, mine, dflt)


def test_etcd_outage_join_on_a_node_new_to_the_network(
        lab: Lab, plugin: str, cleanup: list[str]) -> None:
    """As above, but the joining node has no instance of the network yet, so its CreateNetwork
    also comes during the outage. The manager chose the VNI before (AllocateNetwork)."""
    net = make_network(lab, "late")
    cleanup += ["late1", "late2"]
    try:
        first = run_container(lab, 1, "late1", net.name)
        wait_converged(lab, net)
        assert kernel_entries(lab.node(2), net.id) is None, "node 2 has the network already"
        etcd = Etcd(lab)
        etcd.stop()
        try:
            second = run_container(lab, 2, "late2", net.name)
        finally:
            etcd.start()
        wait_for(lambda: unreachable(lab, first, [second.ip]) == [], timeout=60,
                 what="the container started during the outage to become reachable")
        assert_all_reach(lab, [first, second], net)
    finally:
        remove_containers(lab, *cleanup)
        cleanup.clear()
        remove_network(lab, net)


def test_killed_node_leaves_within_peer_ttl_and_comes_back(lab: Lab, ours: Net,
                                                            web: str) -> None:
    tasks = tasks_of(wait_converged(lab, ours), web)
    victim = lab.node(3)
    vtep = str(victim.address)
    assert len(etcd_get(lab, NODES)) == 3

    lab.kill_node(3)

    def forgotten() -> bool:
        for node in lab.nodes[:2]:
            entries = kernel_entries(node, ours.id)
            assert entries is not None
            if any(dst == vtep for _, dst in entries.fdb):
                return False
            if {ip for ip, _ in entries.neigh} & {t.ip for t in tasks if t.node == 3}:
                return False
        return True

    took = wait_for(forgotten, what="nodes 1 and 2 to drop node 3's entries", timeout=30,
                    interval=0.1)
    print(f"\nnode 3's entries gone from nodes 1 and 2 {took:.1f}s after the kill "
          f"(PEER_TTL {PEER_TTL}s)")
    # A lease lasts PEER_TTL after its last refresh; allow for the watch and a busy machine.
    assert took <= PEER_TTL + 3
    assert all(vtep != v for _, _, v in published(lab, ours.id).values())
    assert len(etcd_get(lab, NODES)) == 2
    survivors = [t for t in tasks if t.node != 3]
    assert_all_reach(lab, survivors, ours)

    lab.start_node(3)
    lab.wait_swarm_ready(90)
    wait_for(lambda: plugin_enabled(victim), what="the plugin on node 3", timeout=60)
    wait_tasks(lab, web, 6)
    # The killed containers' endpoints never come back (dockerd sends no Leave for them).
    after = tasks_of(wait_converged(lab, ours, timeout=60), web)
    assert sorted(t.node for t in after) == [1, 1, 2, 2, 3, 3]
    assert_all_reach(lab, after, ours)


# --------------------------------------------------------------------------- issue 11

ESP_REASON = "--opt encrypted needs IPsec ESP with AES-GCM in the kernel"


def test_encrypted_network_without_esp_tells_the_user_why_on_every_node(
        lab: Lab, plugin: str) -> None:
    """This machine's kernel has no ESP, so no node of the lab can carry an encrypted network.
    The manager allocates it; every node refuses its endpoints with the reason, which the
    user reads in `docker service ps --no-trunc` and from `docker run`, never a task stuck
    in New or a timeout. Every node's record says it cannot encrypt, and any node's status
    lists them all."""

    manager = lab.node(1)
    net_id = manager.docker("network", "create", "-d", plugin, "--attachable",
                            "--opt", "encrypted", "enc").stdout.strip()
    manager.docker("service", "create", "-d", "--name", "encweb", "--mode", "global",
                   "--no-resolve-image", "--network", "enc", IMAGE, "sleep", "1d")
    try:
        def refused_on() -> set[str]:
            out = manager.docker("service", "ps", "--no-trunc", "--format",
                                 "{{.Node}}\t{{.Error}}", "encweb").stdout
            return {line.split("\t")[0] for line in out.splitlines()
                    if ESP_REASON in line and "esp4" in line}

        wait_for(lambda: len(refused_on()) == 3, what="a task refused with the reason on "
                 "each of the 3 nodes", timeout=180)
        run = lab.node(2).docker("run", "-d", "--name", "encbox", "--network", "enc", IMAGE,
                                 "sleep", "1d", check=False, timeout=120)
        assert run.returncode != 0, run.stdout
        assert ESP_REASON in run.stderr and "esp4" in run.stderr, run.stderr
        assert "context deadline exceeded" not in run.stderr and '"Err' not in run.stderr

        # Nothing of the network in any node's kernel.
        for node in lab.nodes:
            assert not (plugin_netns_dir(node) / f"sn-{net_id[:12]}").exists()

        records = {k: json.loads(v) for k, v in etcd_get(lab, NODES).items()}
        assert len(records) == 3, records
        for rec in records.values():
            assert rec["esp"] is False and "esp4" in rec["esp_detail"], rec
        nodes = lab.node(3).plugin_status(plugin)["Nodes"]
        assert sorted(n["Node"] for n in nodes) == sorted(str(n.address) for n in lab.nodes)
        assert all(n["ESP"] is False for n in nodes), nodes
    finally:
        # The refused container stays (Created) and holds its attachment until removed.
        remove_containers(lab, "encbox")
        remove_service(lab, "encweb")
        last: list[str] = []

        def removed() -> bool:
            out = manager.docker("network", "rm", "enc", check=False)
            last[:] = [out.stderr]
            return out.returncode == 0

        try:
            wait_for(removed, what="docker network rm enc", timeout=60)
        except AssertionError as e:
            task = last[0].rsplit(" ", 1)[-1].strip()
            info = manager.docker("inspect", "--format", "{{.ServiceID}} {{.NodeID}} "
                                  "{{json .Spec}} {{json .Status}}", task, check=False)
            raise AssertionError(f"{e}: {last} {info.stdout} {info.stderr}") from None
