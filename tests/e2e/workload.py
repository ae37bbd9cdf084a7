"""Networks, services and containers on a :class:`DockerHost`, and connectivity checks."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass

from tests.e2e.dockerhost import IMAGE, PLUGIN_NAME, DockerHost, HostError, wait_for


@dataclass(frozen=True)
class Box:
    """A running container attached to a network, and its address there."""

    name: str
    container_id: str
    ip: str


def create_network(host: DockerHost, name: str, *opts: str, driver: str = PLUGIN_NAME) -> str:
    return host.docker("network", "create", "-d", driver, *opts, name, timeout=120).stdout.strip()


def network_info(host: DockerHost, name: str) -> dict[str, object]:
    info = json.loads(host.docker("network", "inspect", name).stdout)[0]
    assert isinstance(info, dict)
    return info


def container_ip(host: DockerHost, container: str, network: str) -> str:
    fmt = "{{json .NetworkSettings.Networks}}"
    nets = json.loads(host.docker("inspect", "-f", fmt, container).stdout)
    ip = nets.get(network, {}).get("IPAddress", "")
    if not ip:
        raise HostError(f"container {container} has no address on {network}: {nets}")
    return str(ip)


def run_box(host: DockerHost, name: str, network: str, *opts: str) -> Box:
    cid = host.docker(
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
        timeout=120,
    ).stdout.strip()
    return Box(name, cid, container_ip(host, cid, network))


def create_service(
    host: DockerHost, name: str, network: str, replicas: int = 2, timeout: float = 120
) -> list[Box]:
    host.docker(
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        name,
        "--network",
        network,
        "--replicas",
        str(replicas),
        "--restart-condition",
        "any",
        IMAGE,
        "sleep",
        "86400",
        timeout=120,
    )
    return service_boxes(host, name, network, replicas, timeout)


def service_boxes(
    host: DockerHost, service: str, network: str, replicas: int, timeout: float = 120
) -> list[Box]:
    """The service's running task containers, once exactly ``replicas`` of them run."""

    def running() -> list[str] | None:
        out = host.docker(
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=com.docker.swarm.service.name={service}",
            "--filter",
            "status=running",
        ).stdout.split()
        return out if len(out) == replicas else None

    try:
        ids = wait_for(f"{replicas} running tasks of {service}", running, timeout, interval=0.5)
    except HostError as e:
        tasks = host.docker("service", "ps", "--no-trunc", service, check=False).stdout
        raise HostError(f"{e}\n{tasks}\ndockerd log:\n{host.tail()}") from e
    assert isinstance(ids, list)
    return [Box(cid[:12], cid, container_ip(host, cid, network)) for cid in ids]


def can_ping(host: DockerHost, src: Box, dst_ip: str, tries: int = 3) -> bool:
    for _ in range(tries):
        out = host.docker(
            "exec", src.container_id, "ping", "-c", "1", "-W", "2", dst_ip, check=False, timeout=30
        )
        if out.returncode == 0:
            return True
        time.sleep(0.5)
    return False


def ping_failures(host: DockerHost, boxes: list[Box]) -> list[str]:
    """Every ordered pair that cannot ping; an empty list means full connectivity."""
    return [
        f"{a.name} -> {b.name} ({b.ip})"
        for a, b in itertools.permutations(boxes, 2)
        if not can_ping(host, a, b.ip)
    ]


def assert_all_ping(host: DockerHost, boxes: list[Box]) -> None:
    assert len({b.ip for b in boxes}) == len(boxes), f"duplicate addresses: {boxes}"
    failures = ping_failures(host, boxes)
    assert not failures, f"no connectivity: {failures}\ndockerd log:\n{host.tail(60)}"
