"""The VIP test on a swarmnet network whose addresses come from Docker's default IPAM
(no ``--ipam-driver``): the VIP and the task addresses are swarm's, not our pool's."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.vmswarm import vmlab
from tests.vmswarm.checks import settle
from tests.vmswarm.vmlab import Lab, Workloads

pytestmark = pytest.mark.kernellab

FETCHES = 30
CONVERGE = 60


def test_default_ipam_vip_in_dns(lab: Lab, workloads: Workloads) -> None:
    webd = workloads.webd
    ipam = lab.docker("network", "inspect", "-f", "{{.IPAM.Driver}}", webd.network).strip()
    assert ipam == "default"
    assert vmlab.resolve(lab, webd.client, webd.name) == {webd.vip}
    assert vmlab.resolve(lab, webd.client, f"tasks.{webd.name}") == {t.ip for t in webd.tasks}
    for task in webd.tasks:
        assert vmlab.fetch_many(lab, webd.client, f"http://{task.ip}/", 1) == [task.hostname]


def test_default_ipam_vip_reaches_every_task(lab: Lab, workloads: Workloads) -> None:
    webd = workloads.webd
    names = {t.hostname for t in webd.tasks}
    url = f"http://{webd.name}/"
    with lab.timed(f"webd: VIP balancing converged ({FETCHES} fetches)"):
        bodies = settle(
            lambda: vmlab.fetch_many(lab, webd.client, url, FETCHES),
            lambda b: set(b) == names,
            CONVERGE,
        )
    assert set(bodies) == names, (
        f"{FETCHES} fetches of {url} (VIP {webd.vip}) reached {dict(Counter(bodies))}; "
        f"tasks are {sorted(names)}\ndockerd log:\n{lab.log_tail()}"
    )
