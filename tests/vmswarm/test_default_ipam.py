"""The VIP test on a swarmnet network whose addresses come from Docker's default IPAM
(no ``--ipam-driver``): the VIP and the task addresses are swarm's, not our pool's."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.vmswarm import vmlab
from tests.vmswarm.checks import settle
from tests.vmswarm.vmlab import Lab, Task

pytestmark = pytest.mark.kernellab

SERVICE = "webd"
NETWORK = "sndflt"
CLIENT = "dfltclient"
REPLICAS = 3
FETCHES = 30
CONVERGE = 60


@dataclass
class Web:
    network_id: str
    tasks: list[Task]
    vip: ipaddress.IPv4Address


@pytest.fixture(scope="module")
def webd(lab: Lab) -> Iterator[Web]:
    with lab.timed("webd: network create (default IPAM)"):
        net_id = vmlab.create_network(lab, NETWORK)
    with lab.timed("webd: 3-replica service running"):
        tasks = vmlab.create_http_service(lab, SERVICE, NETWORK, REPLICAS)
    with lab.timed("webd: client container running"):
        vmlab.run_client(lab, CLIENT, NETWORK)
    yield Web(net_id, tasks, vmlab.service_vip(lab, SERVICE, net_id))
    lab.docker("service", "rm", SERVICE, check=False)


def test_default_ipam_vip_in_dns(lab: Lab, webd: Web) -> None:
    ipam = lab.docker("network", "inspect", "-f", "{{.IPAM.Driver}}", NETWORK).strip()
    assert ipam == "default"
    assert vmlab.resolve(lab, CLIENT, SERVICE) == {webd.vip}
    assert vmlab.resolve(lab, CLIENT, f"tasks.{SERVICE}") == {t.ip for t in webd.tasks}
    for task in webd.tasks:
        assert vmlab.fetch_many(lab, CLIENT, f"http://{task.ip}/", 1) == [task.hostname]


def test_default_ipam_vip_reaches_every_task(lab: Lab, webd: Web) -> None:
    names = {t.hostname for t in webd.tasks}
    url = f"http://{SERVICE}/"
    with lab.timed(f"webd: VIP balancing converged ({FETCHES} fetches)"):
        bodies = settle(
            lambda: vmlab.fetch_many(lab, CLIENT, url, FETCHES),
            lambda b: set(b) == names,
            CONVERGE,
        )
    assert set(bodies) == names, (
        f"{FETCHES} fetches of {url} (VIP {webd.vip}) reached {dict(Counter(bodies))}; "
        f"tasks are {sorted(names)}\ndockerd log:\n{lab.log_tail()}"
    )
