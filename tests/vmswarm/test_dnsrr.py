"""``--endpoint-mode dnsrr`` keeps working: DNS answers the task addresses, there is no
VIP, and load balancing programs nothing for the service."""

from __future__ import annotations

import json

import pytest

from tests.vmswarm import vmlab
from tests.vmswarm.vmlab import Lab, Workloads

pytestmark = pytest.mark.kernellab


def test_dnsrr_resolves_to_tasks_and_answers(lab: Lab, workloads: Workloads) -> None:
    rr = workloads.rr
    vips = json.loads(
        lab.docker("service", "inspect", "-f", "{{json .Endpoint.VirtualIPs}}", rr.name)
    )
    assert not vips, f"a dnsrr service got VIPs: {vips}"
    assert vmlab.resolve(lab, rr.client, rr.name) == {t.ip for t in rr.tasks}
    names = {t.hostname for t in rr.tasks}
    bodies = vmlab.fetch_many(lab, rr.client, f"http://{rr.name}/", 4)
    assert all(b in names for b in bodies), f"fetches of {rr.name} by name: {bodies}"
    # The client's IPVS services of ours are web's only (one VIP on this network).
    marks = vmlab.our_ipvs_services(lab, rr.client)
    task_ips = {str(t.ip) for t in rr.tasks}
    assert not any(backends & task_ips for backends in marks.values()), marks
