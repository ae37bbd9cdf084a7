"""The plugin on a standalone dockerd (no swarm) with --live-restore: SCOPE=local, dockerd
restarts that keep containers running, and the plugin shipped through a local registry."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from testbed.proc import stop as stop_process
from testbed.registry import BIN as REGISTRY_BIN
from testbed.registry import write_config as registry_config
from tests.e2e.capture import capture
from tests.e2e.dockerhost import (
    BUSYBOX,
    NETNS_DIR,
    PLUGIN_NAME,
    DockerHost,
    nsfs_mounts_under,
    run,
    wait_for,
)
from tests.e2e.workload import assert_all_ping, create_network, network_info, run_box

pytestmark = pytest.mark.e2e

REGISTRY = "127.0.0.1:5000"  # inside the dockerd's network namespace: nobody else sees it


def remove_everything(h: DockerHost) -> None:
    ids = h.docker("ps", "-aq").stdout.split()
    if ids:
        h.docker("rm", "-f", *ids, timeout=120)
    for name in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split():
        if name not in {"bridge", "host", "none"}:
            h.docker("network", "rm", name, timeout=60)


@pytest.fixture(autouse=True)
def clean_host(local_host: DockerHost) -> Iterator[None]:
    remove_everything(local_host)
    yield
    remove_everything(local_host)
    h = local_host
    wait_for(
        "the plugin to remove its links and namespaces",
        lambda: not (h.swarmnet_links() or h.plugin_netns() or nsfs_mounts_under(h.run_dir)),
        30,
    )


def test_local_scope_network_connects_containers(local_host: DockerHost) -> None:
    h = local_host
    with capture(h, "local"):
        create_network(h, "lo1", "--subnet", "10.232.1.0/24")
    info = network_info(h, "lo1")
    assert info["Scope"] == "local"
    assert info["Driver"] == PLUGIN_NAME
    with capture(h, "local-run"):
        boxes = [run_box(h, f"l1{c}", "lo1") for c in "abc"]
    assert_all_ping(h, boxes)
    with capture(h, "local-remove"):
        remove_everything(h)


def test_local_scope_with_plugin_ipam(local_host: DockerHost) -> None:
    h = local_host
    with capture(h, "local-ipam"):
        create_network(h, "lo2", "--ipam-driver", PLUGIN_NAME)
        boxes = [run_box(h, f"l2{c}", "lo2") for c in "ab"]
    assert_all_ping(h, boxes)
    with capture(h, "local-ipam-remove"):
        remove_everything(h)


def test_local_scope_ipam_honours_subnet_gateway_range_and_aux_addresses(
    local_host: DockerHost,
) -> None:
    h = local_host
    create_network(
        h,
        "lo3",
        "--ipam-driver",
        PLUGIN_NAME,
        "--subnet",
        "10.232.3.0/24",
        "--gateway",
        "10.232.3.1",
        "--ip-range",
        "10.232.3.128/25",
        "--aux-address",
        "reserved=10.232.3.128",
    )
    boxes = [run_box(h, f"l3{c}", "lo3") for c in "ab"]
    ips = sorted(b.ip for b in boxes)
    # From the range, in order, skipping the reserved aux address.
    assert ips == ["10.232.3.129", "10.232.3.130"], ips
    assert_all_ping(h, boxes)


def test_plain_name_without_tag_is_not_found_standalone(local_host: DockerHost) -> None:
    out = local_host.docker("network", "create", "-d", "swarmnet-overlay", "plain", check=False)
    assert out.returncode != 0
    assert "could not resolve driver swarmnet-overlay" in out.stderr


def test_live_restore_dockerd_restart_keeps_containers_connected(local_host: DockerHost) -> None:
    h = local_host
    create_network(h, "lo3")
    boxes = [run_box(h, f"l3{c}", "lo3") for c in "ab"]
    assert_all_ping(h, boxes)
    started = {
        b.name: h.docker("inspect", "-f", "{{.State.StartedAt}}", b.name).stdout for b in boxes
    }
    plugin_pids = h.plugin_pids()
    assert plugin_pids
    netns = h.plugin_netns()
    pid_a = h.docker("inspect", "-f", "{{.State.Pid}}", boxes[0].name).stdout.strip()

    h.stop()
    # dockerd is gone; the containers, the plugin and the kernel data path are not.
    ping = ["nsenter", "-t", pid_a, "-n", BUSYBOX, "ping", "-c", "1", "-W", "2", boxes[1].ip]
    assert run(ping, check=False, timeout=30).returncode == 0
    h.start()

    assert h.plugin_pids() == plugin_pids, "live-restore should keep the plugin process"
    for b in boxes:
        assert h.docker("inspect", "-f", "{{.State.StartedAt}}", b.name).stdout == started[b.name]
    assert h.plugin_netns() == netns
    assert_all_ping(h, boxes)
    assert_all_ping(h, [*boxes, run_box(h, "l3c", "lo3")])


def test_make_install_again_replaces_the_plugin_and_keeps_containers_connected(
    local_host: DockerHost,
) -> None:
    h = local_host
    create_network(h, "lo5")
    boxes = [run_box(h, f"l5{c}", "lo5") for c in "ab"]
    old_id = h.plugin_id()
    netns = h.plugin_netns()

    h.install_plugin({"SCOPE": "local"})  # make install, again

    assert h.plugin_id() != old_id
    assert h.plugin_enabled()
    assert h.plugin_netns() == netns
    assert_all_ping(h, boxes)
    assert_all_ping(h, [*boxes, run_box(h, "l5c", "lo5")])


@pytest.fixture
def registry(local_host: DockerHost) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:5000 inside the dockerd's network namespace."""
    d = local_host.workdir / "registry"
    config = registry_config(d, REGISTRY)
    with open(d / "registry.log", "ab") as log:
        proc = subprocess.Popen(
            [
                "nsenter",
                f"--net={NETNS_DIR / local_host.netns}",
                "--",
                REGISTRY_BIN,
                "serve",
                str(config),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for(
            "docker-registry",
            lambda: (
                local_host.in_netns("curl", "-sf", f"http://{REGISTRY}/v2/", check=False).returncode
                == 0
            ),
            30,
        )
        yield REGISTRY
    finally:
        stop_process(proc)


def test_push_to_registry_then_install_from_it(local_host: DockerHost, registry: str) -> None:
    """`make push` then `docker plugin install`. Docker 20.10 refuses to store the same
    plugin content twice ("content sha256:...: already exists"), so the local copy goes
    first, as it would on a build machine that is not also a node."""
    h = local_host
    settings = [
        f"state.source={h.state_dir}",
        f"run.source={h.run_dir}",
        f"docker-run.source={h.workdir / 'exec'}",
        f"docker-socket.source={h.socket}",
        "SCOPE=local",
    ]
    remote = f"{registry}/swarmnet-overlay:latest"
    h.docker("plugin", "disable", "-f", PLUGIN_NAME, timeout=120)
    h.docker("plugin", "rm", "-f", PLUGIN_NAME, timeout=120)

    h.make("push", f"REGISTRY={registry}", timeout=600)
    h.docker("plugin", "rm", "-f", remote, timeout=60)

    h.docker(
        "plugin",
        "install",
        "--grant-all-permissions",
        "--alias",
        PLUGIN_NAME,
        remote,
        *settings,
        timeout=600,
    )
    h.plugin_id()  # remembered for teardown
    info = json.loads(h.docker("plugin", "inspect", PLUGIN_NAME).stdout)[0]
    assert info["Enabled"] is True
    assert info["PluginReference"] == remote
    assert "SCOPE=local" in info["Settings"]["Env"]

    create_network(h, "lo4")
    assert_all_ping(h, [run_box(h, f"l4{c}", "lo4") for c in "ab"])
