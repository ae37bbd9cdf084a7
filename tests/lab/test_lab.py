"""The lab itself, proven with Docker's built-in overlay driver (no plugin of ours involved)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plugin.unixhttp import unix_connect
from tests.lab.fixtures import plugin_build
from tests.lab.lab import (
    ETCDCTL,
    IMAGE,
    Lab,
    LabError,
    Node,
    _cgroup_procs,
    find_cgroups,
    mounts_under,
    netns_pids,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(nodes=3)


@pytest.fixture
def overlay(lab: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    """A built-in attachable overlay network, removed after the test."""
    name = f"ov-{request.node.name[5:25].replace('_', '-')}"
    lab.node(1).docker("network", "create", "-d", "overlay", "--attachable", name)
    yield name
    manager = lab.manager()
    for svc in manager.docker("service", "ls", "-q").stdout.split():
        manager.docker("service", "rm", svc, check=False)
    for node in lab.nodes:
        if node.is_running():
            ids = node.docker("ps", "-aq").stdout.split()
            if ids:
                node.docker("rm", "-f", *ids, check=False)
    wait_for(lambda: manager.docker("network", "rm", name, check=False).returncode == 0,
             what=f"network rm {name}", timeout=30)


def wait_for(cond: Callable[[], bool], *, what: str, timeout: float = 60,
             interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def container_ip(node: Node, container: str, network: str) -> str:
    fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    ip = node.docker("inspect", "-f", fmt, container).stdout.strip()
    assert ip, f"{container} on {node} has no address on {network}"
    return ip


def unreachable(node: Node, container: str, ips: list[str]) -> list[str]:
    """The addresses ``container`` cannot ping (two tries each)."""
    script = ('for ip in "$@"; do ping -c1 -W2 "$ip" >/dev/null || ping -c1 -W2 "$ip" >/dev/null'
              ' || echo "$ip"; done')
    out = node.docker("exec", container, "sh", "-c", script, "sh", *ips, timeout=120)
    return out.stdout.split()


# --------------------------------------------------------------------------- the swarm


def test_nodes_are_distinct_ready_swarm_members(lab: Lab) -> None:
    swarm = lab.swarm_nodes()
    assert sorted(swarm) == sorted(n.hostname for n in lab.nodes)
    assert all(status == "Ready" for status, _ in swarm.values()), swarm
    infos = [json.loads(n.docker("info", "--format", "{{json .}}").stdout) for n in lab.nodes]
    assert len({i["ID"] for i in infos}) == len(lab.nodes), "engine IDs must differ"
    assert len({i["Swarm"]["NodeID"] for i in infos}) == len(lab.nodes)
    for node, info in zip(lab.nodes, infos, strict=True):
        assert info["Name"] == node.hostname
        assert info["Swarm"]["NodeAddr"] == str(node.address)
        assert info["CgroupVersion"] in ("1", "2")
        assert info["DockerRootDir"] == str(node.data_root)
        assert node.docker("image", "inspect", IMAGE).returncode == 0


def test_nodes_reach_each_other_and_etcd_over_the_fabric(lab: Lab) -> None:
    for a, b in itertools.permutations(lab.nodes, 2):
        a.exec("ping", "-c1", "-W2", str(b.address))
    for node in lab.nodes:
        node.exec(ETCDCTL, "--endpoints", lab.etcd_url, "put", f"/snlab-test/{node.index}",
                  node.hostname)
    out = lab.node(1).exec(ETCDCTL, "--endpoints", lab.etcd_url, "get", "--prefix",
                           "/snlab-test/", "--print-value-only").stdout.split()
    assert sorted(out) == sorted(n.hostname for n in lab.nodes)
    lab.etcdctl("del", "--prefix", "/snlab-test/")


def test_docker_state_stays_inside_the_node(lab: Lab) -> None:
    """Bridges and iptables rules that dockerd makes live in the node's namespace."""
    for node in lab.nodes:
        links = node.exec("ip", "-o", "link", "show").stdout
        assert "docker0" in links
        assert "DOCKER" in node.exec("iptables-save").stdout
    root_rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert str(lab.subnet.network_address)[:-1] not in root_rules


# --------------------------------------------------------------------------- built-in overlay


def test_builtin_overlay_service_tasks_all_ping_each_other(lab: Lab, overlay: str) -> None:
    manager = lab.node(1)
    manager.docker("service", "create", "-d", "--name", "web", "--network", overlay,
                   "--replicas", "6", "--replicas-max-per-node", "2", "--no-resolve-image",
                   IMAGE, "sleep", "1d")

    def running() -> int:
        out = manager.docker("service", "ps", "web", "--filter", "desired-state=running",
                             "--format", "{{.CurrentState}}").stdout
        return sum(line.startswith("Running") for line in out.splitlines())

    wait_for(lambda: running() == 6, what="6 web tasks Running")
    tasks: list[tuple[Node, str, str]] = []
    for node in lab.nodes:
        ids = node.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=web").stdout
        for cid in ids.split():
            tasks.append((node, cid, container_ip(node, cid, overlay)))
    per_node = {n.index: sum(1 for t in tasks if t[0] is n) for n in lab.nodes}
    assert per_node == {1: 2, 2: 2, 3: 2}, per_node
    ips = [ip for _, _, ip in tasks]
    assert len(set(ips)) == 6
    failures = {}
    for node, cid, ip in tasks:
        bad = unreachable(node, cid, [other for other in ips if other != ip])
        if bad:
            failures[f"{node.hostname}/{ip}"] = bad
    assert not failures, f"unreachable task pairs: {failures}"


def test_builtin_overlay_attachable_containers_across_nodes(lab: Lab, overlay: str) -> None:
    ips = {}
    for node in lab.nodes:
        node.docker("run", "-d", "--name", f"c{node.index}", "--network", overlay, IMAGE,
                    "sleep", "1d")
        ips[node.index] = container_ip(node, f"c{node.index}", overlay)
    for node in lab.nodes:
        others = [ip for i, ip in ips.items() if i != node.index]
        assert unreachable(node, f"c{node.index}", others) == []


# --------------------------------------------------------------------------- node failure


def test_kill_node_stops_everything_and_start_node_rejoins(lab: Lab, overlay: str) -> None:
    victim = lab.node(3)
    victim.docker("run", "-d", "--name", "victim", "--network", overlay, IMAGE, "sleep", "1d")
    lab.node(1).docker("run", "-d", "--name", "watcher", "--network", overlay, IMAGE,
                       "sleep", "1d")
    ip = container_ip(victim, "victim", overlay)
    assert unreachable(lab.node(1), "watcher", [ip]) == []

    lab.kill_node(3)
    assert netns_pids(victim.netns) == set()
    assert _cgroup_procs(lab.cgroups.tracking / victim.cgroup.lstrip("/")) == set()
    assert not victim.is_running()
    wait_for(lambda: lab.swarm_nodes()[victim.hostname][0] == "Down",
             what="the manager to see node3 Down", timeout=90)

    lab.start_node(3)
    lab.wait_swarm_ready(90)
    # After the "reboot" the old container is gone from the network; a new one is reachable.
    victim.docker("rm", "-f", "victim")
    victim.docker("run", "-d", "--name", "victim2", "--network", overlay, IMAGE, "sleep", "1d")
    ip2 = container_ip(victim, "victim2", overlay)
    wait_for(lambda: unreachable(lab.node(1), "watcher", [ip2]) == [],
             what="node1 reaching the restarted node3's container", timeout=30)


def test_disconnect_node_cuts_the_fabric(lab: Lab) -> None:
    lab.disconnect_node(2)
    try:
        assert lab.node(1).exec("ping", "-c1", "-W1", str(lab.node(2).address),
                                check=False).returncode != 0
    finally:
        lab.connect_node(2)
    wait_for(lambda: lab.node(1).exec("ping", "-c1", "-W1", str(lab.node(2).address),
                                      check=False).returncode == 0, what="node2 back", timeout=10)


# --------------------------------------------------------------------------- plugin


def test_install_plugin_on_every_node(lab: Lab) -> None:
    build = plugin_build()
    if build is None:
        pytest.skip("build/plugin does not exist (run `make plugin`)")
    lab.install_plugin(build)
    try:
        for node in lab.nodes:
            out = node.docker("plugin", "inspect", "-f",
                              "{{.Enabled}} {{json .Settings.Env}}", "swarmnet-overlay:latest")
            enabled, env = out.stdout.split(" ", 1)
            assert enabled == "true"
            assert f"ETCD_ENDPOINTS={lab.etcd_url}" in json.loads(env)
            # The plugin answers on its socket, reached from here despite the long path.
            with unix_connect(node.plugin_socket("swarmnet-overlay:latest"), timeout=10) as sock:
                sock.sendall(b"POST /Plugin.Activate HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
            assert b" 200 " in reply.split(b"\r\n", 1)[0], reply
            assert b"NetworkDriver" in reply
    finally:
        lab.remove_plugin()


# --------------------------------------------------------------------------- teardown


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_down_without_state_file_leaves_nothing(lab_factory: Callable[..., Lab]) -> None:
    """A second lab, 'crashed' (state file gone), removed by a Lab that only knows its name."""
    links_before = root_links()
    small = lab_factory(nodes=2)
    small.node(1).docker("network", "create", "-d", "overlay", "--attachable", "ov")
    small.node(1).docker("service", "create", "-d", "--name", "s", "--network", "ov",
                         "--replicas", "2", "--replicas-max-per-node", "1", "--no-resolve-image",
                         IMAGE, "sleep", "1d")
    small.node(2).docker("run", "-d", "--network", "ov", IMAGE, "sleep", "1d")
    plugin_ids: set[str] = set()
    plugin_pids: set[int] = set()
    build = plugin_build()
    if build is not None:
        small.install_plugin(build)
        plugin_ids = {n.plugin_id("swarmnet-overlay:latest") for n in small.nodes}
        for hierarchy in small.cgroups.hierarchies:
            for cg in find_cgroups(hierarchy, plugin_ids):
                plugin_pids |= _cgroup_procs(cg)
        assert plugin_pids, "the plugins run"
    wait_for(lambda: all(len(n.docker("ps", "-q").stdout.split()) >= 1 for n in small.nodes),
             what="containers on both nodes")
    container_pids = {int(n.docker("inspect", "-f", "{{.State.Pid}}", c).stdout)
                      for n in small.nodes for c in n.docker("ps", "-q").stdout.split()}
    daemon_pids = {n.dockerd_pid() for n in small.nodes}
    assert None not in daemon_pids

    (small.workdir / "lab.json").unlink()
    stranger = Lab(1, small.workdir, name=small.name)  # wrong node count on purpose
    stranger.down()

    assert stranger.leftovers(plugin_ids) == {"netns": [], "cgroups": [], "mounts": [],
                                              "processes": [], "files": []}
    for pid in container_pids | plugin_pids | {p for p in daemon_pids if p}:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    for hierarchy in small.cgroups.hierarchies:
        assert find_cgroups(hierarchy, plugin_ids) == []
    assert mounts_under(small.workdir) == []
    new_links = root_links() - links_before
    ours = {"br0", "eth0", "docker0", "docker_gwbridge"} | {f"n{i}" for i in range(1, 10)}
    assert not new_links & ours, new_links
    assert (small.workdir / "logs" / "node1.log").exists(), "logs are kept"
    print(f"\nlab timings: {small.timings}, down {stranger.timings['down']:.2f}s")


def test_up_failure_names_the_step_and_cleans_up(require_lab: None, tmp_path: Path) -> None:
    broken = Lab(2, tmp_path / "w", name=f"f{os.getpid() % 100000}",
                 dockerd_args=["--no-such-flag"])
    with pytest.raises(LabError, match=r"(?s)step 'wait for dockerds'.*no-such-flag"):
        broken.up()
    assert broken.leftovers() == {"netns": [], "cgroups": [], "mounts": [], "processes": [],
                                  "files": []}


def test_up_refuses_a_lab_that_already_exists(lab: Lab, tmp_path: Path) -> None:
    twin = Lab(3, tmp_path / "twin", name=lab.name)
    with pytest.raises(LabError, match="already exists"):
        twin.up()
    assert lab.node(1).is_running(), "the existing lab is untouched"
    assert not (tmp_path / "twin").exists()
