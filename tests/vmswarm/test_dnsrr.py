"""``--endpoint-mode dnsrr`` keeps working: DNS answers the task addresses, there is no
VIP, and load balancing programs nothing for the service."""

from __future__ import annotations

import json

import pytest

from tests.vmswarm import vmlab
from tests.vmswarm.vmlab import Lab

pytestmark = pytest.mark.kernellab

SERVICE = "webrr"
NETWORK = "snrr"
CLIENT = "rrclient"
REPLICAS = 2


def test_dnsrr_resolves_to_tasks_and_answers(lab: Lab) -> None:
    with lab.timed("webrr: network create"):
        vmlab.create_network(lab, NETWORK, "--ipam-driver", vmlab.PLUGIN_NAME)
    with lab.timed("webrr: 2-replica dnsrr service running"):
        tasks = vmlab.create_http_service(
            lab, SERVICE, NETWORK, REPLICAS, "--endpoint-mode", "dnsrr"
        )
    vmlab.run_client(lab, CLIENT, NETWORK)
    vips = json.loads(
        lab.docker("service", "inspect", "-f", "{{json .Endpoint.VirtualIPs}}", SERVICE)
    )
    assert not vips, f"a dnsrr service got VIPs: {vips}"
    task_ips = {t.ip for t in tasks}
    assert vmlab.resolve(lab, CLIENT, SERVICE) == task_ips
    names = {t.hostname for t in tasks}
    bodies = vmlab.fetch_many(lab, CLIENT, f"http://{SERVICE}/", 4)
    assert all(b in names for b in bodies), f"fetches of {SERVICE} by name: {bodies}"
    assert vmlab.our_ipvs_services(lab, CLIENT) == {}, "IPVS service for a dnsrr service"
    lab.docker("service", "rm", SERVICE, check=False)
