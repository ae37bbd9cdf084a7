"""Issue 11: the errors a user reads through the Docker CLI.

Each test runs the docker command a user would and asserts the text it prints: a plain
sentence, never the plugin's JSON body (Docker's plugin client reads only "Err" from a
non-200 reply and otherwise prints the whole body).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.dockerhost import (
    IMAGE,
    PLUGIN_NAME,
    UNDERLAY_ADDR,
    DockerHost,
    unix_post,
    wait_for,
)
from tests.e2e.workload import create_network, network_info, run_box

pytestmark = pytest.mark.e2e

SUBNET = "10.99.0.0/30"  # room for a gateway (.1) and one container (.2)


def refused(out: subprocess.CompletedProcess[str]) -> str:
    """The error the CLI printed, checked to be a sentence and not a JSON body."""
    assert out.returncode != 0, out.stdout
    err = out.stderr.strip()
    for raw in ('{"Error"', '{"Err"', '"Err":', '"Error":'):
        assert raw not in err, err
    return err


def docker_run(
    h: DockerHost, name: str, network: str, *opts: str
) -> subprocess.CompletedProcess[str]:
    return h.docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        *opts,
        IMAGE,
        "sleep",
        "86400",
        check=False,
        timeout=120,
    )


def remove_everything(h: DockerHost) -> None:
    ids = h.docker("ps", "-aq").stdout.split()
    if ids:
        h.docker("rm", "-f", *ids, timeout=120)
    for svc in h.docker("service", "ls", "-q", check=False).stdout.split():
        h.docker("service", "rm", svc, check=False)
    for name in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split():
        if name not in {"bridge", "host", "none", "docker_gwbridge", "ingress"}:
            h.docker("network", "rm", name, check=False, timeout=60)


@pytest.fixture
def local(local_host: DockerHost) -> Iterator[DockerHost]:
    remove_everything(local_host)
    yield local_host
    remove_everything(local_host)


def test_ipam_errors_are_sentences_and_duplicates_are_refused(local: DockerHost) -> None:
    h = local
    ipam = ("--ipam-driver", PLUGIN_NAME)
    create_network(h, "dup1", *ipam, "--subnet", SUBNET)

    # A second network with the same subnet: refused, as Docker refuses overlapping pools.
    err = refused(
        h.docker(
            "network",
            "create",
            "-d",
            PLUGIN_NAME,
            *ipam,
            "--subnet",
            SUBNET,
            "dup2",
            check=False,
            timeout=120,
        )
    )
    assert err == (
        "Error response from daemon: IpamDriver.RequestPool: Pool 10.99.0.0/30 is already used "
        "by another network in this address space; give each network its own --subnet"
    )

    # The same --ip twice: the second container is refused.
    box = run_box(h, "ipa", "dup1", "--ip", "10.99.0.2")
    assert box.ip == "10.99.0.2"
    err = refused(docker_run(h, "ipb", "dup1", "--ip", "10.99.0.2"))
    assert err.startswith(
        "docker: Error response from daemon: IpamDriver.RequestAddress: Address 10.99.0.2 is "
        "already in use by another container on this network (pool 10.99.0.0/30); choose "
        "another --ip, or leave --ip out to get a free address"
    ), err

    # The pool is full: the example, now a sentence that says what to do.
    err = refused(docker_run(h, "ipc", "dup1"))
    assert err.startswith(
        "docker: Error response from daemon: IpamDriver.RequestAddress: no free address left "
        "in pool 10.99.0.0/30: remove a container from the network, or create the network "
        "with a larger --subnet"
    ), err
    h.docker("rm", "-f", "ipb", "ipc", check=False)

    # A dockerd restart (live-restore) keeps everything, and the refusals still hold.
    h.restart()
    assert h.docker("inspect", "-f", "{{.State.Running}}", "ipa").stdout.strip() == "true"
    refused(docker_run(h, "ipb", "dup1", "--ip", "10.99.0.2"))
    h.docker("rm", "-f", "ipb")
    refused(
        h.docker(
            "network",
            "create",
            "-d",
            PLUGIN_NAME,
            *ipam,
            "--subnet",
            SUBNET,
            "dup2",
            check=False,
            timeout=120,
        )
    )

    # Released, the address and then the subnet are free again.
    h.docker("rm", "-f", "ipa")
    assert run_box(h, "ipb", "dup1", "--ip", "10.99.0.2").ip == "10.99.0.2"
    h.docker("rm", "-f", "ipb")
    h.docker("network", "rm", "dup1")
    create_network(h, "dup2", *ipam, "--subnet", SUBNET)
    assert network_info(h, "dup2")["IPAM"]["Config"][0]["Subnet"] == SUBNET  # type: ignore[index]


@pytest.fixture
def swarm(swarm_host: DockerHost) -> Iterator[DockerHost]:
    remove_everything(swarm_host)
    yield swarm_host
    remove_everything(swarm_host)


ESP_REASON = "--opt encrypted needs IPsec ESP with AES-GCM in the kernel"


def test_encrypted_network_on_a_kernel_without_esp_tells_the_user_why(swarm: DockerHost) -> None:
    """This machine's kernel has no ESP: the reason reaches `docker service ps` and
    `docker run`, instead of a task stuck in New and a timeout."""
    h = swarm
    create_network(h, "enc1", "--attachable", "--opt", "encrypted", "--subnet", "10.98.0.0/24")
    h.docker(
        "service",
        "create",
        "--detach",
        "--name",
        "encsvc",
        "--network",
        "enc1",
        IMAGE,
        "sleep",
        "86400",
        timeout=120,
    )

    def task_errors() -> list[str] | None:
        # Until the node reports the plugin, the task is pending ("no suitable node").
        out = h.docker("service", "ps", "--no-trunc", "--format", "{{.Error}}", "encsvc").stdout
        errors = [line for line in out.splitlines() if line.strip()]
        return errors if any("encrypted" in e for e in errors) else None

    errors = wait_for("a task of the service to fail with an error", task_errors, 180)
    assert errors is not None
    assert any(ESP_REASON in e and "esp4" in e for e in errors), errors
    print(f"docker service ps --no-trunc: {errors}")
    states = h.docker("service", "ps", "--format", "{{.CurrentState}}", "encsvc").stdout
    assert "New" not in states.split(), states

    err = refused(docker_run(h, "encbox", "enc1"))
    print(f"docker run: {err}")
    assert ESP_REASON in err and "esp4" in err, err
    assert "context deadline exceeded" not in err, err
    # Nothing of it is left in the kernel, and the network never carried clear traffic.
    assert not h.swarmnet_links()
    # The node's record says it cannot carry encrypted networks, and why.
    code, raw = unix_post(h.plugin_socket(), "/Swarmnet.Status", b"")
    assert code == 200, raw
    nodes = json.loads(raw)["Nodes"]
    assert [(n["Node"], n["ESP"]) for n in nodes] == [(UNDERLAY_ADDR, False)], nodes
    assert "esp4" in nodes[0]["ESPDetail"]
    info = json.loads(h.docker("network", "inspect", "enc1").stdout)[0]
    assert "encrypted" in info["Options"]

    # The refused container leaves no attachment behind: the network can be removed.
    h.docker("rm", "-f", "encbox")
    h.docker("service", "rm", "encsvc")
    wait_for(
        "docker network rm enc1",
        lambda: h.docker("network", "rm", "enc1", check=False).returncode == 0,
        60,
    )
