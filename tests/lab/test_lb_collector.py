"""Issue 10 end to end: the load-balancing collector in the real managed plugin, on a swarm lab
of 3 managers and 1 worker with etcd.

One lab and one plugin install for the whole module (about 3 minutes on a 2-core machine, plus
about 1 for `make plugin` when the bundle is stale). The tests run in file order and share the
networks ``lbnet`` and ``lbnet2`` (our driver and our IPAM), ``lbdflt`` (our driver, Docker's
IPAM) and ``lbov`` (Docker's overlay); each test removes the services it made, and the two
failover tests bring the node or plugin they stopped back.

What the collector wrote is read from etcd (``/swarmnet/v1/lb/services/<network>/<service>``)
and compared with what the swarm managers tell the docker CLI: ``docker service inspect``
(Endpoint.VirtualIPs) and ``docker inspect`` of the tasks ``docker service ps`` lists
(NetworksAttachments). A running task meant to run is a backend of weight 1; a running task
being stopped (desired state shutdown or remove) one of weight 0 (draining).

This kernel has no IPVS, so the plugin programs nothing here (its status says why); the
collector, which only needs dockerd and etcd, runs all the same.

Logs: ``<lab workdir>/logs/node<i>.log`` (dockerd and the plugin's output) and ``etcd.log``.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.fixtures import plugin_build
from tests.lab.lab import IMAGE, Lab, LabError, Node

pytestmark = pytest.mark.e2e

PLUGIN = "swarmnet-overlay:latest"
REPO = Path(__file__).resolve().parents[2]
LB = "/swarmnet/v1/lb"
SERVICES = f"{LB}/services/"
MARKS = f"{LB}/marks"
ELECTION = f"{LB}/collector"
LEASE_TTL = 10  # seconds: plugin.election.DEFAULT_TTL
POLL = 2  # seconds: the collector's poll interval
# Our fwmarks: 0x736e ("sn") in the upper 16 bits, index 1-0xffff below.
OUR_MARKS = range(0x736E0001, 0x736F0000)
DRAINING = ("shutdown", "remove")
MANAGERS = 3
WORKER = 4


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


def make_network(lab: Lab, name: str, *, driver: str = PLUGIN, ipam: str | None = None) -> Net:
    args = ["network", "create", "-d", driver, "--attachable"]
    if ipam:
        args += ["--ipam-driver", ipam]
    return Net(name, lab.node(1).docker(*args, name).stdout.strip())


def manager_docker(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker ARGS`` on a running manager, retried while the raft has no leader (after a
    manager was killed) or the command otherwise fails for a few seconds."""
    last: list[str] = []

    def ok() -> bool:
        try:
            last[:] = [lab.manager().docker(*args).stdout]
            return True
        except LabError as e:
            last[:] = [str(e)]
            return False

    try:
        wait_for(ok, what=f"docker {' '.join(args)}", timeout=60, interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {last}") from None
    return subprocess.CompletedProcess(args, 0, last[0], "")


def create_service(lab: Lab, name: str, networks: list[str], replicas: int,
                   *extra: str) -> str:
    args = ["service", "create", "-d", "--name", name, "--replicas", str(replicas),
            "--no-resolve-image", "--stop-grace-period", "1s"]
    for network in networks:
        args += ["--network", network]
    service_id = manager_docker(lab, *args, *extra, IMAGE, "sleep", "1d").stdout.strip()
    wait_settled(lab, name, replicas)
    return service_id


def remove_services(lab: Lab, *names: str) -> None:
    existing = set(manager_docker(lab, "service", "ls", "--format", "{{.Name}}").stdout.split())
    doomed = [n for n in names if n in existing]
    if doomed:
        manager_docker(lab, "service", "rm", *doomed)


def tasks(lab: Lab, *services: str) -> list[dict[str, Any]]:
    """Every task of ``services`` the managers know (history included), as ``docker inspect``
    gives them."""
    found: list[dict[str, Any]] = []
    last: list[str] = []

    def listed() -> bool:
        ids = manager_docker(lab, "service", "ps", "-q", "--no-trunc", *services).stdout.split()
        if not ids:
            found.clear()
            return True
        try:
            out = lab.manager().docker("inspect", "--type", "task", *ids, check=False)
        except LabError as e:
            last[:] = [str(e)]
            return False
        # A task deleted since `service ps` (scaled down, removed) is skipped: it is gone.
        errors = [ln for ln in out.stderr.splitlines() if "No such task" not in ln]
        if out.returncode != 0 and (errors or not out.stdout.strip()):
            last[:] = [out.stderr]
            return False
        found[:] = json.loads(out.stdout)
        return True

    try:
        wait_for(listed, what=f"the tasks of {services}", timeout=60, interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {last}") from None
    return found


def running(task: dict[str, Any]) -> bool:
    return bool(task["Status"]["State"] == "running" and task["DesiredState"] == "running")


def wait_settled(lab: Lab, service: str, replicas: int, timeout: float = 120) -> None:
    """Exactly ``replicas`` tasks running and meant to run, and no other task still running
    (an old one being stopped)."""
    def settled() -> bool:
        ts = tasks(lab, service)
        return (sum(running(t) for t in ts) == replicas
                and all(running(t) or t["Status"]["State"] != "running" for t in ts))

    wait_for(settled, what=f"{replicas} {service} tasks running and no other", timeout=timeout,
             interval=1)


# -- what the records should be, and are


Backends = dict[str, int]  # task IP -> weight


@dataclass(frozen=True)
class Want:
    name: str
    vip: str
    backends: Backends


def expected(lab: Lab, ours: set[str]) -> dict[tuple[str, str], Want]:
    """(network id, service id) -> the record the docker CLI's view implies, for every VIP
    service on one of ``ours``."""
    names = manager_docker(lab, "service", "ls", "-q").stdout.split()
    if not names:
        return {}
    services = json.loads(manager_docker(lab, "service", "inspect", *names).stdout)
    by_service: dict[str, list[dict[str, Any]]] = {}
    # A down node's tasks still show as running, but their addresses answer nothing.
    down = {n["ID"] for n in json.loads(manager_docker(
        lab, "node", "inspect", *manager_docker(lab, "node", "ls", "-q").stdout.split()).stdout)
        if n["Status"]["State"] == "down"}
    for task in tasks(lab, *names):
        if task.get("NodeID") in down:
            continue
        by_service.setdefault(task["ServiceID"], []).append(task)
    want = {}
    for svc in services:
        mode = ((svc["Spec"].get("EndpointSpec") or {}).get("Mode")) or "vip"
        if mode != "vip":
            continue
        for vip in (svc.get("Endpoint") or {}).get("VirtualIPs") or []:
            if vip["NetworkID"] not in ours:
                continue
            backends: Backends = {}
            for task in by_service.get(svc["ID"], []):
                if task["Status"]["State"] != "running":
                    continue
                if task["DesiredState"] == "running":
                    weight = 1
                elif task["DesiredState"] in DRAINING:
                    weight = 0
                else:
                    continue
                for att in task.get("NetworksAttachments") or []:
                    if att["Network"]["ID"] == vip["NetworkID"]:
                        ip = att["Addresses"][0].split("/")[0]
                        backends[ip] = max(weight, backends.get(ip, 0))
            want[(vip["NetworkID"], svc["ID"])] = Want(svc["Spec"]["Name"],
                                                       vip["Addr"].split("/")[0], backends)
    return want


def etcd_get(lab: Lab, prefix: str) -> dict[str, bytes]:
    out = lab.etcdctl("get", "--prefix", prefix, "-w", "json").stdout
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
            for kv in json.loads(out).get("kvs", [])}


def records(lab: Lab) -> dict[tuple[str, str], dict[str, Any]]:
    """(network id, service id) -> the record in etcd, as JSON."""
    out = {}
    for key, raw in etcd_get(lab, SERVICES).items():
        network_id, service_id = key[len(SERVICES):].split("/")
        out[(network_id, service_id)] = json.loads(raw)
    return out


def as_want(rec: dict[str, Any]) -> Want:
    return Want(rec["name"], rec["vip"], {b["ip"]: b["weight"] for b in rec["backends"]})


def differences(lab: Lab, ours: set[str]) -> list[str]:
    want = expected(lab, ours)
    have = {k: as_want(r) for k, r in records(lab).items()}
    problems = [f"missing {k}: {w}" for k, w in want.items() if k not in have]
    problems += [f"extra {k}: {h}" for k, h in have.items() if k not in want]
    problems += [f"{k}: etcd {have[k]} docker {w}" for k, w in want.items()
                 if k in have and have[k] != w]
    return problems


def wait_records_match(lab: Lab, nets: list[Net], timeout: float = 30
                       ) -> dict[tuple[str, str], dict[str, Any]]:
    """Wait until etcd holds exactly the records the docker CLI's view implies; return them.
    Checks on the way that every fwmark is ours and used once, and that the mark table holds
    exactly the records' marks."""
    ours = {n.id for n in nets}
    problems: list[str] = []

    def match() -> bool:
        problems[:] = differences(lab, ours)
        return not problems

    try:
        wait_for(match, what="the records in etcd to equal docker's view", timeout=timeout,
                 interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}: {problems} (logs in {lab.logs})") from None
    recs = records(lab)
    marks = [r["fwmark"] for r in recs.values()]
    assert all(m in OUR_MARKS for m in marks), [hex(m) for m in marks]
    assert len(set(marks)) == len(marks), f"a fwmark used twice: {recs}"
    assert mark_table(lab) == {k: r["fwmark"] & 0xFFFF for k, r in recs.items()}
    return recs


def mark_table(lab: Lab) -> dict[tuple[str, str], int]:
    raw = etcd_get(lab, MARKS).get(MARKS)
    if raw is None:
        return {}
    out = {}
    for key, index in json.loads(raw)["marks"].items():
        network_id, _, service_id = key.partition("/")
        out[(network_id, service_id)] = int(index)
    return out


def of_service(recs: dict[tuple[str, str], dict[str, Any]], service_id: str
               ) -> dict[str, dict[str, Any]]:
    """Network id -> record, for one service."""
    return {net: r for (net, svc), r in recs.items() if svc == service_id}


# -- the plugin's status


def status(node: Node) -> dict[str, Any]:
    return node.plugin_status(PLUGIN)


def collectors(lab: Lab) -> dict[int, dict[str, Any]]:
    """Node index -> the Collector section of its status, for every running node; for one
    whose plugin does not answer, why."""
    out = {}
    for node in lab.nodes:
        if not node.is_running():
            continue
        try:
            out[node.index] = status(node)["LoadBalancing"].get("Collector") or {}
        except (LabError, OSError) as e:
            out[node.index] = {"Role": None, "Unreachable": str(e)}
    return out


def wait_one_leader(lab: Lab, timeout: float = 30) -> int:
    """Wait until exactly one running manager leads, the other running managers stand by and
    the worker says so; return the leader's node index."""
    seen: dict[int, dict[str, Any]] = {}

    def one() -> bool:
        seen.clear()
        seen.update(collectors(lab))
        roles = {i: c.get("Role") for i, c in seen.items()}
        leaders = [i for i, r in roles.items() if r == "leader"]
        return (len(leaders) == 1 and leaders[0] <= MANAGERS
                and all(r == "standby" for i, r in roles.items() if i <= MANAGERS
                        and i != leaders[0])
                and all(r == "worker" for i, r in roles.items() if i > MANAGERS))

    try:
        wait_for(one, what="one collector leader, standby managers, a worker", timeout=timeout,
                 interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}: {seen} (logs in {lab.logs})") from None
    return next(i for i, c in seen.items() if c["Role"] == "leader")


def election_holder(lab: Lab) -> str | None:
    raw = etcd_get(lab, ELECTION).get(ELECTION)
    return None if raw is None else str(json.loads(raw)["identity"])


def kernel_has_ipvs() -> bool:
    from pyroute2 import IPVS
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPVS():
            return True
    except NetlinkError as e:
        if e.code == errno.ENOENT:
            return False
        raise


# --------------------------------------------------------------------------- fixtures


def plugin_bundle(lab: Lab) -> Path:
    """build/plugin, made or remade by `make plugin` when a source changed (with node 1's
    dockerd: `make plugin` runs `docker build`)."""
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
    lab = lab_factory(nodes=WORKER, managers=MANAGERS)
    yield lab
    # Free the machine for the next module now; lab_factory checks for leftovers at the end.
    lab.down()


@pytest.fixture(scope="module")
def plugin(lab: Lab) -> str:
    lab.install_plugin(plugin_bundle(lab), PLUGIN)
    return PLUGIN


@pytest.fixture(scope="module")
def nets(lab: Lab, plugin: str) -> list[Net]:
    """Our networks, on which records are expected: two with our driver and our IPAM, one
    with our driver and Docker's IPAM (which allocates without asking any plugin)."""
    return [make_network(lab, "lbnet", ipam=PLUGIN), make_network(lab, "lbnet2", ipam=PLUGIN),
            make_network(lab, "lbdflt")]


@pytest.fixture(scope="module")
def overlay(lab: Lab) -> Net:
    """Docker's own overlay: a VIP there is not ours."""
    return make_network(lab, "lbov", driver="overlay")


# --------------------------------------------------------------------------- tests


def test_status_says_off_without_ipvs_and_shows_one_collector_leader(
        lab: Lab, plugin: str) -> None:
    leader = wait_one_leader(lab)
    no_ipvs = not kernel_has_ipvs()
    for node in lab.nodes:
        lb = status(node)["LoadBalancing"]
        if no_ipvs:
            assert lb["State"] == "off", lb
            assert "no IPVS" in lb["Reason"], lb
        collector = lb["Collector"]
        assert collector["Election"]["kind"] == "etcd", collector
        if node.index == leader:
            assert collector["Election"]["leader"] is True, collector
            assert collector["LastError"] is None, collector
            assert collector["Runs"] >= 1, collector
            # The key in etcd names the node that says it leads.
            assert election_holder(lab) == collector["Election"]["identity"], collector
        elif node.index <= MANAGERS:
            assert collector["Election"]["leader"] is False, collector
    identities = [c["Election"]["identity"] for c in collectors(lab).values()]
    assert len(set(identities)) == len(identities), identities


def test_records_follow_a_service_through_scale_update_and_rm(
        lab: Lab, nets: list[Net]) -> None:
    lbnet = nets[0]
    web = create_service(lab, "lbweb", [lbnet.name], 3)
    try:
        recs = of_service(wait_records_match(lab, nets), web)
        assert list(recs) == [lbnet.id], recs
        first = recs[lbnet.id]
        assert len(first["backends"]) == 3, first
        assert {b["weight"] for b in first["backends"]} == {1}, first
        assert ipaddress.ip_address(first["vip"]) not in {
            ipaddress.ip_address(b["ip"]) for b in first["backends"]}, first

        for replicas in (5, 2):
            manager_docker(lab, "service", "scale", "-d", f"lbweb={replicas}")
            wait_settled(lab, "lbweb", replicas)
            rec = of_service(wait_records_match(lab, nets), web)[lbnet.id]
            assert len(rec["backends"]) == replicas, rec
            assert {b["weight"] for b in rec["backends"]} == {1}, rec
            # The VIP and the fwmark stay as long as the service does.
            assert (rec["vip"], rec["fwmark"]) == (first["vip"], first["fwmark"]), rec

        before = {t["ID"] for t in tasks(lab, "lbweb") if running(t)}
        manager_docker(lab, "service", "update", "-d", "--force", "lbweb")
        wait_for(lambda: not before & {t["ID"] for t in tasks(lab, "lbweb") if running(t)},
                 what="lbweb's tasks to be replaced", timeout=120, interval=1)
        wait_settled(lab, "lbweb", 2)
        rec = of_service(wait_records_match(lab, nets), web)[lbnet.id]
        assert len(rec["backends"]) == 2 and (rec["vip"], rec["fwmark"]) == (
            first["vip"], first["fwmark"]), rec
    finally:
        remove_services(lab, "lbweb")
    left = wait_records_match(lab, nets)
    assert not of_service(left, web), left
    assert all(svc != web for _, svc in mark_table(lab)), "the fwmark outlived the service"


def test_dnsrr_gets_no_record_and_fwmarks_are_unique_and_ours(
        lab: Lab, nets: list[Net], overlay: Net) -> None:
    lbnet, lbnet2, dflt = nets
    try:
        dns = create_service(lab, "lbdns", [lbnet.name], 2, "--endpoint-mode", "dnsrr")
        two = create_service(lab, "lbtwo", [lbnet.name, lbnet2.name, dflt.name, overlay.name],
                             2)
        web = create_service(lab, "lbweb", [lbnet.name], 1)
        recs = wait_records_match(lab, nets)
        assert not of_service(recs, dns), recs
        assert set(of_service(recs, two)) == {lbnet.id, lbnet2.id, dflt.id}, recs  # not lbov
        assert set(of_service(recs, web)) == {lbnet.id}, recs
        assert len(recs) == 4, recs  # fwmarks unique and ours: wait_records_match checks

        # The leader makes etcd hold exactly its records: a stray one goes, a changed one is
        # put back.
        stray = f"{SERVICES}{lbnet.id}/{'0' * 25}"
        lab.etcdctl("put", stray, json.dumps({**recs[(lbnet.id, web)], "service_id": "0" * 25}))
        lab.etcdctl("put", f"{SERVICES}{lbnet.id}/{web}",
                    json.dumps({**recs[(lbnet.id, web)], "backends": []}))
        assert wait_records_match(lab, nets) == recs
    finally:
        remove_services(lab, "lbdns", "lbtwo", "lbweb")
    assert wait_records_match(lab, nets) == {}
    assert mark_table(lab) == {}


def test_failover_a_standby_leads_within_the_lease_and_records_follow(
        lab: Lab, nets: list[Net]) -> None:
    lbnet = nets[0]
    leader = wait_one_leader(lab)
    old_identity = election_holder(lab)
    fo = create_service(lab, "lbfo", [lbnet.name], 2)
    # One task surely on the node that dies.
    pin = create_service(lab, "lbpin", [lbnet.name], 1, "--constraint",
                         f"node.hostname=={lab.node(leader).hostname}")
    try:
        recs = wait_records_match(lab, nets)
        mark = of_service(recs, fo)[lbnet.id]["fwmark"]
        (pinned,) = of_service(recs, pin)[lbnet.id]["backends"]

        dead_id = json.loads(manager_docker(
            lab, "node", "inspect", lab.node(leader).hostname).stdout)[0]["ID"]
        lab.kill_node(leader)
        # The dead leader's lease expires at most LEASE_TTL after its last keepalive; a
        # standby tries every second and its collector runs within a poll; then a margin for
        # a busy machine.
        took = wait_for(
            lambda: [i for i, c in collectors(lab).items() if c.get("Role") == "leader"] != [],
            what=f"a manager to lead after node {leader} was killed",
            timeout=LEASE_TTL + 1 + POLL + 10, interval=0.2)
        new = wait_one_leader(lab)
        print(f"\nnode {new} leads {took:.1f}s after node {leader} (the leader) was killed "
              f"(lease TTL {LEASE_TTL}s)")
        assert new != leader
        assert election_holder(lab) not in (None, old_identity)

        # The new leader follows changes.
        manager_docker(lab, "service", "scale", "-d", "lbfo=4")
        # Swarm reports the dead node's task running until it sees the node down, and the
        # records rightly leave it out once it does: count only tasks on live nodes.
        wait_for(lambda: sum(running(t) and t.get("NodeID") != dead_id
                             for t in tasks(lab, "lbfo")) >= 4,
                 what="4 lbfo tasks running on live nodes", timeout=120, interval=1)
        rec = of_service(wait_records_match(lab, nets), fo)[lbnet.id]
        assert rec["fwmark"] == mark, rec
        assert sum(b["weight"] == 1 for b in rec["backends"]) >= 4, rec

        # Once swarm sees the node down, nobody can report its tasks stopped, so the
        # managers still see them running; their addresses answer nothing: no backends.
        wait_for(lambda: any(n["Status"]["State"] == "down" for n in json.loads(
                     manager_docker(lab, "node", "inspect", lab.node(leader).hostname).stdout)),
                 what=f"swarm to see node {leader} down", timeout=90, interval=1)
        rec = of_service(wait_records_match(lab, nets), pin)[lbnet.id]
        assert pinned not in rec["backends"] and rec["backends"] == [], rec

        lab.start_node(leader)
        lab.wait_swarm_ready(90)
        # The node that led comes back as a standby: the new leader keeps leading.
        assert wait_one_leader(lab, timeout=90) == new
        manager_docker(lab, "service", "scale", "-d", "lbfo=1")
        wait_settled(lab, "lbfo", 1)
        wait_settled(lab, "lbpin", 1)
        recs = wait_records_match(lab, nets)
        rec = of_service(recs, fo)[lbnet.id]
        assert len(rec["backends"]) == 1 and rec["fwmark"] == mark, rec
        # The dead task is gone; its replacement runs on the node again.
        assert [b["weight"] for b in of_service(recs, pin)[lbnet.id]["backends"]] == [1], recs
    finally:
        if not lab.node(leader).is_running():
            lab.start_node(leader)
        remove_services(lab, "lbfo", "lbpin")
    assert wait_records_match(lab, nets) == {}


def test_plugin_disable_on_the_leader_hands_over_without_waiting_for_the_lease(
        lab: Lab, nets: list[Net]) -> None:
    dflt = nets[2]
    leader = wait_one_leader(lab)
    node = lab.node(leader)
    raw = etcd_get(lab, ELECTION)[ELECTION]
    lease = json.loads(raw)["lease"]
    node.docker("plugin", "disable", "-f", PLUGIN, timeout=120)
    try:
        # Stopping revoked the lease (so the key went with it) before the process ended.
        ttl = lab.etcdctl("lease", "timetolive", lease, "-w", "json").stdout
        assert json.loads(ttl)["ttl"] == -1, f"lease {lease} outlived the plugin: {ttl}"
        took = wait_for(
            lambda: [i for i, c in collectors(lab).items()
                     if i != leader and c.get("Role") == "leader"] != [],
            what=f"a manager to lead after node {leader}'s plugin was disabled",
            timeout=1 + POLL + 10, interval=0.2)
        print(f"\na manager leads {took:.1f}s after node {leader}'s plugin was disabled")
        # On the network with Docker's IPAM: the swarm allocates our IPAM's addresses through
        # the plugin of the raft leader, which may be this node. Not on this node: its tasks
        # could not join the network without the plugin.
        dis = create_service(lab, "lbdis", [dflt.name], 2, "--constraint",
                             f"node.hostname!={node.hostname}")
        assert len(of_service(wait_records_match(lab, nets), dis)[dflt.id]["backends"]) == 2
    finally:
        node.docker("plugin", "enable", PLUGIN, timeout=120)
        remove_services(lab, "lbdis")
    assert wait_one_leader(lab) != leader
    assert wait_records_match(lab, nets) == {}
