"""The node-side programmer (driver.lb.programmer) against the fake load balancer
(kept honest by tests/contract/lb_contract.py) and a real in-memory store."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from core.layout import StoreLayout
from driver.kernel.fake_lb import FakeLoadBalancer
from driver.lb.model import Backend, ServiceRecord, mark
from driver.lb.port import LoadBalancerError
from driver.lb.programmer import LoadBalancing, sandbox_locator
from driver.records import EndpointRecord, encode
from plugin.app import STORE_ROOT
from plugin.store.memory import MemoryKV

LAYOUT = StoreLayout(STORE_ROOT)

IP = ipaddress.IPv4Address
NET = "a" * 64
OTHER = "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Unreachable(MemoryKV):
    """A shared store whose reads fail, as etcd's do in an outage."""

    down = False

    def list(self, prefix: str) -> dict[str, bytes]:
        if self.down:
            raise ConnectionError("etcd is unreachable")
        return super().list(prefix)


def record(service: str, index: int, *ips: str, weight: int = 1, net: str = NET) -> ServiceRecord:
    return ServiceRecord(
        network_id=net,
        service_id=service,
        name=service,
        vip=IP(f"10.0.1.{100 + index}"),
        fwmark=mark(index),
        backends=tuple(sorted(Backend(IP(i), weight) for i in ips)),
    )


def join(local: MemoryKV, endpoint: str, sandbox: str, net: str = NET) -> None:
    ep = EndpointRecord(network_id=net, endpoint_id=endpoint, mac="02:42:0a:00:01:05")
    local.put(LAYOUT.endpoint(net, endpoint), encode(ep.with_join(sandbox)))


def leave(local: MemoryKV, endpoint: str, net: str = NET) -> None:
    ep = EndpointRecord(network_id=net, endpoint_id=endpoint, mac="02:42:0a:00:01:05")
    local.put(LAYOUT.endpoint(net, endpoint), encode(ep))


def make(
    shared: MemoryKV | None = None,
) -> tuple[LoadBalancing, FakeLoadBalancer, MemoryKV, MemoryKV, Clock]:
    fake, local, clock = FakeLoadBalancer(), MemoryKV(), Clock()
    shared = shared if shared is not None else MemoryKV()
    return (
        LoadBalancing(fake, local, shared, clock=clock, sandbox_wait=10, layout=LAYOUT),
        fake,
        local,
        shared,
        clock,
    )


def test_every_joined_sandbox_gets_the_services_of_its_networks() -> None:
    lb, fake, local, shared, _ = make()
    web = record("web", 1, "10.0.1.5", "10.0.1.6")
    shared.put(LAYOUT.lb_service(web.network_id, web.service_id), web.to_json())
    for sb in ("/sb/1", "/sb/2"):
        fake.add_sandbox(Path(sb))
    join(local, "e1", "/sb/1")
    join(local, "e2", "/sb/2")
    assert lb.sync() is False
    assert fake.sandboxes[Path("/sb/1")] == (web.virtual_service(),)
    assert fake.sandboxes[Path("/sb/2")] == (web.virtual_service(),)


def test_a_changed_record_reprograms_and_an_unchanged_one_costs_nothing() -> None:
    lb, fake, local, shared, _ = make()
    fake.add_sandbox(Path("/sb/1"))
    join(local, "e1", "/sb/1")
    web = record("web", 1, "10.0.1.5", "10.0.1.6")
    shared.put(LAYOUT.lb_service(web.network_id, web.service_id), web.to_json())
    lb.sync()
    calls = len(fake.calls)
    lb.sync()
    assert len(fake.calls) == calls  # nothing changed: no kernel call
    drained = record("web", 1, "10.0.1.5")
    shared.put(LAYOUT.lb_service(drained.network_id, drained.service_id), drained.to_json())
    lb.sync()
    assert fake.sandboxes[Path("/sb/1")] == (drained.virtual_service(),)


def test_a_service_removed_leaves_nothing_in_the_sandbox() -> None:
    lb, fake, local, shared, _ = make()
    fake.add_sandbox(Path("/sb/1"))
    join(local, "e1", "/sb/1")
    web = record("web", 1, "10.0.1.5")
    shared.put(LAYOUT.lb_service(web.network_id, web.service_id), web.to_json())
    lb.sync()
    shared.delete(LAYOUT.lb_service(web.network_id, web.service_id))
    lb.sync()
    assert fake.sandboxes[Path("/sb/1")] == ()


def test_a_sandbox_that_left_our_networks_is_cleared() -> None:
    lb, fake, local, shared, _ = make()
    fake.add_sandbox(Path("/sb/1"))
    join(local, "e1", "/sb/1")
    web = record("web", 1, "10.0.1.5")
    shared.put(LAYOUT.lb_service(web.network_id, web.service_id), web.to_json())
    lb.sync()
    leave(local, "e1")  # docker network disconnect: the container lives on
    lb.sync()
    assert fake.sandboxes[Path("/sb/1")] == ()
    assert ("clear", Path("/sb/1")) in fake.calls


def test_a_sandbox_not_bound_yet_is_retried_then_given_up_until_its_state_changes() -> None:
    lb, fake, local, shared, clock = make()
    join(local, "e1", "/sb/late")
    web = record("web", 1, "10.0.1.5")
    shared.put(LAYOUT.lb_service(web.network_id, web.service_id), web.to_json())
    assert lb.sync() is True  # waiting for Docker to bind the namespace
    clock.now = 2.0
    fake.add_sandbox(Path("/sb/late"))
    assert lb.sync() is False
    assert fake.sandboxes[Path("/sb/late")] == (web.virtual_service(),)

    join(local, "e2", "/sb/never")
    assert lb.sync() is True
    clock.now = 20.0  # past sandbox_wait
    assert lb.sync() is False
    status = lb.status()
    assert status["Sandboxes"]["GivenUp"] == 1
    calls = len(fake.calls)
    lb.sync()
    assert len(fake.calls) == calls  # given up: not tried again for the same state
    more = record("web", 1, "10.0.1.5", "10.0.1.7")
    shared.put(LAYOUT.lb_service(more.network_id, more.service_id), more.to_json())
    fake.add_sandbox(Path("/sb/never"))
    lb.sync()
    assert fake.sandboxes[Path("/sb/never")] == (more.virtual_service(),)


def test_an_outage_of_the_shared_store_changes_nothing_programmed() -> None:
    shared = Unreachable()
    lb, fake, local, _, _ = make(shared)
    fake.add_sandbox(Path("/sb/1"))
    join(local, "e1", "/sb/1")
    web = record("web", 1, "10.0.1.5")
    shared.put(LAYOUT.lb_service(web.network_id, web.service_id), web.to_json())
    lb.sync()
    shared.down = True
    calls = len(fake.calls)
    lb.sync()
    assert len(fake.calls) == calls
    assert fake.sandboxes[Path("/sb/1")] == (web.virtual_service(),)
    assert lb.status()["Store"].startswith("unreachable")
    shared.down = False
    lb.sync()
    assert lb.status()["Store"] == "ok"


def test_a_restart_programs_every_joined_sandbox_once_even_with_nothing_to_hold() -> None:
    """What a previous run left (a service removed while the plugin was down) goes."""
    lb, fake, local, _shared, _ = make()
    fake.add_sandbox(Path("/sb/1"))
    join(local, "e1", "/sb/1")
    stale = record("gone", 3, "10.0.1.9")
    fake.program(Path("/sb/1"), (stale.virtual_service(),))
    lb.sync()
    assert fake.sandboxes[Path("/sb/1")] == ()


def test_a_new_container_with_no_service_costs_no_kernel_call() -> None:
    lb, fake, local, _, _ = make()
    lb.sync()
    fake.add_sandbox(Path("/sb/new"))
    join(local, "e1", "/sb/new")
    lb.sync()
    assert fake.calls == []


def test_a_kernel_failure_is_reported_and_retried_at_the_next_pass() -> None:
    lb, fake, local, shared, _ = make()
    fake.add_sandbox(Path("/sb/1"))
    join(local, "e1", "/sb/1")
    web = record("web", 1, "10.0.1.5")
    shared.put(LAYOUT.lb_service(web.network_id, web.service_id), web.to_json())
    fake.fail_next["program"] = LoadBalancerError("sysctl net.ipv4.vs.conntrack: read-only")
    lb.sync()
    assert "conntrack" in lb.status()["LastError"]
    assert fake.sandboxes[Path("/sb/1")] == ()
    lb.sync()
    assert fake.sandboxes[Path("/sb/1")] == (web.virtual_service(),)


def test_status_lists_each_vip_with_its_backends_and_the_sandboxes_programmed() -> None:
    lb, fake, local, shared, _ = make()
    fake.add_sandbox(Path("/sb/1"))
    join(local, "e1", "/sb/1")
    web = record("web", 1, "10.0.1.5", "10.0.1.6")
    other = record("db", 2, "10.0.2.5", net=OTHER)
    for r in (web, other):
        shared.put(LAYOUT.lb_service(r.network_id, r.service_id), r.to_json())
    lb.sync()
    nets = {n["NetworkID"]: n for n in lb.status()["Networks"]}
    (svc,) = nets[NET]["Services"]
    assert svc["VIP"] == str(web.vip)
    assert svc["Backends"] == [{"IP": "10.0.1.5", "Weight": 1}, {"IP": "10.0.1.6", "Weight": 1}]
    assert nets[NET]["SandboxesProgrammed"] == 1
    assert nets[OTHER]["SandboxesProgrammed"] == 0


def test_sandbox_keys_are_found_under_the_mounted_exec_root() -> None:
    assert sandbox_locator("/run/docker-host")("/var/run/docker/netns/2f297c7a9bae") == Path(
        "/run/docker-host/netns/2f297c7a9bae"
    )
    assert sandbox_locator("")("/var/run/docker/netns/x") == Path("/var/run/docker/netns/x")
