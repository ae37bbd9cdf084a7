"""Issue 15: the Prometheus metrics' values and labels, on the real app with the fake
kernel and stores (the e2e suite scrapes the installed plugin with a real Prometheus)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from core.layout import StoreLayout
from driver import mac
from driver.config import EncryptionConfig
from driver.encryption import Encryption
from driver.ipsec_store import IpsecStore
from driver.kernel.fake import FakeKernel
from driver.kernel.fake_ipsec import FakeIpsec
from driver.kernel.port import NetworkSpec
from driver.peers import PeerRecord
from plugin.app import STORE_ROOT, create_app
from plugin.metrics import EXTENSION, Metrics
from plugin.metrics.observer import Observer
from plugin.metrics.repairs import REPAIR_KINDS, classify
from plugin.metrics.scrape import StateCollector
from plugin.settings import Settings, SettingsError, from_env
from plugin.store.memory import MemoryKV
from tests.unit.conftest import Plugin, RecordingControlPlane
from tests.unit.encryption_hub import Hub
from tests.unit.test_network_driver import EP, EP2, NET, create_body, endpoint_body, join_body

LOCAL_VTEP = "192.0.2.1"
ON = {"METRICS_ADDR": "127.0.0.1:9474", "DATA_PATH_ADDR": LOCAL_VTEP}


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def build(
    env: dict[str, str] | None = None,
    *,
    kernel: FakeKernel | None = None,
    store: MemoryKV | None = None,
    control: Any = None,
    settings: Settings | None = None,
    **kwargs: Any,
) -> tuple[Plugin, Metrics, Any]:
    settings = settings or from_env(ON if env is None else env)
    kernel = kernel or FakeKernel()
    store = store or MemoryKV()
    app = create_app(settings, kernel=kernel, local=store, shared=store, control=control, **kwargs)
    return Plugin(app.test_client(), kernel, store), app.extensions.get(EXTENSION), app


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def record(n: int, vtep: str = "192.0.2.2", net: str = NET) -> PeerRecord:
    ip = ipaddress.ip_address(f"10.10.0.{n}")
    return PeerRecord(net, f"{n:02x}" * 32, ip, mac.from_ip(ip), ipaddress.ip_address(vtep))


# -- the setting ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "addr"),
    [
        ("", None),
        ("127.0.0.1:9474", ("127.0.0.1", 9474)),
        (" 0.0.0.0:1 ", ("0.0.0.0", 1)),
        ("[::1]:9474", ("::1", 9474)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_metrics_addr_is_host_and_port_or_off(raw: str, addr: tuple[str, int] | None) -> None:
    assert from_env({"METRICS_ADDR": raw}).metrics_addr == addr


@pytest.mark.parametrize(
    "raw", ["9474", ":9474", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "host.example:9474",
            "::1:9474", "[10.0.0.1]:9474", "127.0.0.1:http", "1.2.3:9474"],
)
def test_a_bad_metrics_addr_stops_the_start_naming_the_setting(raw: str) -> None:
    with pytest.raises(SettingsError) as err:
        from_env({"METRICS_ADDR": raw})
    assert str(err.value).startswith("METRICS_ADDR=")
    assert "127.0.0.1:9474" in str(err.value)  # with an example of a good value


def test_metrics_off_builds_no_registry() -> None:
    _, metrics, _ = build({})
    assert metrics is None


# -- protocol calls -----------------------------------------------------------------


def test_calls_are_timed_by_method_and_outcome() -> None:
    p, m, _ = build()
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    assert p.call("/NetworkDriver.CreateEndpoint", {"NetworkID": NET})[0] == 400
    assert p.call("/NetworkDriver.Join", join_body(net="n" * 25))[0] in (400, 404)
    assert p.call("/NoSuch.Call/" + "x" * 40)[0] == 404
    name = "swarmnet_protocol_call_duration_seconds_count"
    assert value(m, name, method="NetworkDriver.CreateNetwork", outcome="ok") == 2
    assert value(m, name, method="NetworkDriver.CreateEndpoint", outcome="rejected") == 1
    assert value(m, name, method="NetworkDriver.Join", outcome="rejected") == 1
    assert value(m, name, method="other", outcome="rejected") == 1
    total = value(m, "swarmnet_protocol_call_duration_seconds_sum",
                  method="NetworkDriver.CreateNetwork", outcome="ok")
    assert total is not None and 0 < total < 5


# -- networks, endpoints, peers, convergence ---------------------------------------------


def test_networks_endpoints_peers_and_entries() -> None:
    control = RecordingControlPlane()
    p, m, _ = build(control=control)
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    p.ok("/NetworkDriver.CreateEndpoint", endpoint_body(EP, NET, "10.10.0.2/24"))
    p.ok("/NetworkDriver.CreateEndpoint", endpoint_body(EP2, NET, "10.10.0.3/24"))
    p.ok("/NetworkDriver.Join", join_body(EP))
    control.deliver(NET, [record(7), record(8), record(9, vtep=LOCAL_VTEP)])
    assert value(m, "swarmnet_networks") == 1
    assert value(m, "swarmnet_network_info", network=NET, vni="300", encrypted="false",
                 internal="false") == 1
    assert value(m, "swarmnet_endpoints", network=NET) == 2
    assert value(m, "swarmnet_endpoints_joined", network=NET) == 1
    assert value(m, "swarmnet_remote_peers", network=NET) == 2
    assert value(m, "swarmnet_network_broken", network=NET) == 0
    for table in ("fdb", "neighbour"):
        assert value(m, "swarmnet_kernel_entries_programmed_total", table=table, op="add") == 2
    control.deliver(NET, [record(8)])
    assert value(m, "swarmnet_remote_peers", network=NET) == 1
    assert value(m, "swarmnet_kernel_entries_programmed_total", table="fdb", op="remove") == 1
    # Drift repaired on a recheck counts as a repair; the ordinary diff above does not.
    assert value(m, "swarmnet_reconcile_repairs_total", kind="peer_entries") == 0
    p.kernel.remove_peer(NET, record(8).peer())
    control.deliver(NET, [record(8)], recheck=True)
    assert value(m, "swarmnet_reconcile_repairs_total", kind="peer_entries") == 1
    p.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    p.ok("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    assert value(m, "swarmnet_endpoints", network=NET) == 1
    assert value(m, "swarmnet_endpoints_joined", network=NET) == 0


def test_no_label_carries_an_endpoint_id_or_an_address() -> None:
    control = RecordingControlPlane()
    p, m, _ = build(control=control)
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    p.ok("/NetworkDriver.CreateEndpoint", endpoint_body(EP, NET, "10.10.0.2/24"))
    p.ok("/NetworkDriver.Join", join_body(EP))
    control.deliver(NET, [record(7)])
    text = generate_latest(m.registry).decode()
    assert NET in text
    for secret in (EP[:12], record(7).endpoint_id[:12], "10.10.0.2", "10.10.0.7", "192.0.2.2"):
        assert secret not in text, secret
    for line in text.splitlines():
        if line.startswith("swarmnet_") and not line.startswith("swarmnet_build_info"):
            name = line.split("{")[0].split(" ")[0]
            assert name.startswith("swarmnet_"), name


def test_convergence_lag_runs_from_the_watch_event_to_the_programmed_entry() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    obs = Observer(registry, clock=clock)
    r1, r2, own = record(1), record(2), record(3, vtep=LOCAL_VTEP)
    local = ipaddress.ip_address(LOCAL_VTEP)
    obs.record_changed(NET, r1.endpoint_id, r1)
    obs.record_changed(NET, own.endpoint_id, own)
    clock.t += 0.2
    obs.record_changed(NET, r2.endpoint_id, r2)
    changed = replace(r2, vtep=ipaddress.ip_address("192.0.2.5"))
    obs.record_changed(NET, r2.endpoint_id, changed)  # changed again before programming
    clock.t += 0.1
    # A snapshot copied before r2's last change does not count r2 as converged.
    snap = {r.endpoint_id: r for r in (r1, r2, own)}
    obs.peers_programmed(NET, snap, local, added=2, removed=0, recheck=False)

    def lag(suffix: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"swarmnet_convergence_lag_seconds{suffix}", labels)

    assert lag("_count") == 1
    assert lag("_sum") == pytest.approx(0.3)
    assert lag("_bucket", le="0.25") == 0 and lag("_bucket", le="0.5") == 1
    assert obs.pending() == 1  # r2, whose change has not been programmed
    clock.t += 1.0
    obs.peers_programmed(NET, {changed.endpoint_id: changed}, local, added=1, removed=1,
                         recheck=False)
    assert lag("_count") == 2
    assert lag("_sum") == pytest.approx(0.3 + 1.1)  # from r2's first event on
    # A record deleted before it was programmed is not measured.
    obs.record_changed(NET, r1.endpoint_id, r1)
    obs.record_changed(NET, r1.endpoint_id, None)
    assert obs.pending() == 0


def test_the_driver_reports_programmed_peers_to_the_observer() -> None:
    control = RecordingControlPlane()
    p, m, _ = build(control=control)
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    r1 = record(1)
    m.observer.record_changed(NET, r1.endpoint_id, r1)
    assert value(m, "swarmnet_convergence_lag_seconds_count") == 0
    control.deliver(NET, [r1])
    assert value(m, "swarmnet_convergence_lag_seconds_count") == 1
    assert m.observer.pending() == 0


def test_an_observer_that_fails_does_not_fail_the_driver() -> None:
    control = RecordingControlPlane()
    p, m, _ = build(control=control)
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    m.observer.record_changed(NET, "x", "not a record")  # type: ignore[arg-type]
    control.deliver(NET, [record(1)])
    assert p.kernel.peers(NET) == {record(1).peer()}


# -- etcd ----------------------------------------------------------------------------------


def test_etcd_reachability_and_outage_seconds_count_the_outage_in_progress() -> None:
    clock = Clock(0.0)
    registry = CollectorRegistry()
    obs = Observer(registry, clock=clock)
    registry.register(obs.etcd_collector())

    def get(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert get("swarmnet_etcd_reachable") == 0  # no round answered yet
    obs.etcd_reachable(True)
    assert get("swarmnet_etcd_reachable") == 1
    clock.t = 10.0
    obs.etcd_reachable(False)
    obs.etcd_reachable(False)  # every failed round says so: one outage
    clock.t = 15.0
    assert get("swarmnet_etcd_reachable") == 0
    assert get("swarmnet_etcd_outage_seconds_total") == 5.0
    clock.t = 18.0
    obs.etcd_reachable(True)
    clock.t = 30.0
    assert get("swarmnet_etcd_outage_seconds_total") == 8.0
    assert get("swarmnet_etcd_outages_total") == 1
    obs.watch_restarted()
    assert get("swarmnet_etcd_watch_restarts_total") == 1


def test_the_etcd_control_plane_reports_to_the_observer() -> None:
    from plugin.controlplane import EtcdControlPlane
    from plugin.store.etcd import EtcdKV

    # Nothing listens on port 9: the keeper's first round fails and says so.
    kv = EtcdKV(["http://127.0.0.1:9"], timeout=0.5)
    plane = EtcdControlPlane(kv, ttl=5, node="n1", layout=StoreLayout(STORE_ROOT))
    store = MemoryKV()
    app = create_app(from_env(ON), kernel=FakeKernel(), local=store, shared=store, control=plane)
    m = app.extensions[EXTENSION]
    assert plane.events is m.observer
    import time

    deadline = time.monotonic() + 10
    while value(m, "swarmnet_etcd_outages_total") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(m, "swarmnet_etcd_outages_total") == 1
    assert value(m, "swarmnet_etcd_reachable") == 0
    app.extensions["swarmnet"].close()


# -- reconcile -------------------------------------------------------------------------------


def test_reconcile_repairs_are_counted_by_kind() -> None:
    store = MemoryKV()
    p, _, _ = build(store=store)
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    p.ok("/NetworkDriver.CreateEndpoint", endpoint_body(EP, NET, "10.10.0.2/24"))
    p.ok("/NetworkDriver.Join", join_body(EP))
    kernel = FakeKernel()  # a reboot: nothing of ours in the kernel ...
    orphan = "orphanorphanorphan1234567"
    kernel.ensure_network(  # ... but a namespace the store does not know
        NetworkSpec(network_id=orphan, vni=999, mtu=1450, vxlan_port=4789,
                    bridge_addresses=(), local_vtep=None)
    )
    _, m, _ = build(kernel=kernel, store=store)
    assert value(m, "swarmnet_reconcile_repairs_total", kind="namespace_recreated") == 1
    assert value(m, "swarmnet_reconcile_repairs_total", kind="orphan_namespace") == 1
    assert value(m, "swarmnet_reconcile_repairs_total", kind="endpoint_withdrawn") == 1
    assert value(m, "swarmnet_reconcile_repairs_total", kind="other") == 0


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("network abc: recreated its namespace (VNI 300)", "namespace_recreated"),
        ("network abc: removed orphan namespace", "orphan_namespace"),
        ("network abc: broken, will retry (EPERM)", "network_broken"),
        ("network abc: released orphan VNI 300", "orphan_vni"),
        ("endpoint abc: removed orphan veth from network def", "orphan_veth"),
        ("link sncabc: removed orphan", "orphan_link"),
        ("endpoint abc: not published, its veth is gone", "endpoint_withdrawn"),
        ("ipsec: installed Policy(...)", "ipsec_installed"),
        ("ipsec: peer 192.0.2.2: sending with generation 2 (SPI 0x02001002)", "ipsec_installed"),
        ("ipsec: removed SA(...)", "ipsec_removed"),
        ("ipsec: programming peers failed, retrying: boom", "ipsec_failed"),
        ("SwarmnetLocal pool 10.0.0.0/24: released, no pool record held it", "orphan_pool"),
        ("something new", "other"),
    ],
)
def test_reconcile_lines_are_classified(line: str, kind: str) -> None:
    assert classify(line) == kind
    assert kind in REPAIR_KINDS


# -- IPAM ----------------------------------------------------------------------------------


def test_ipam_pools_and_free_addresses() -> None:
    p, m, _ = build({**ON, "SCOPE": "local"})
    pool = p.ok(
        "/IpamDriver.RequestPool", {"AddressSpace": "SwarmnetLocal", "Pool": "10.40.0.0/24"}
    )
    pid = pool["PoolID"]
    p.ok("/IpamDriver.RequestAddress", {"PoolID": pid, "Options": {"RequestAddressType":
                                        "com.docker.network.gateway"}})
    p.ok("/IpamDriver.RequestAddress", {"PoolID": pid, "Address": ""})
    p.ok("/IpamDriver.RequestPool", {"AddressSpace": "SwarmnetGlobal", "Pool": "10.41.0.0/28"})
    assert value(m, "swarmnet_ipam_pools", space="local") == 1
    assert value(m, "swarmnet_ipam_pools", space="global") == 1
    assert value(m, "swarmnet_ipam_addresses_allocated", space="local", pool="10.40.0.0/24") == 2
    assert value(m, "swarmnet_ipam_addresses_free", space="local", pool="10.40.0.0/24") == 252
    assert value(m, "swarmnet_ipam_addresses_free", space="global", pool="10.41.0.0/28") == 14
    p.ok("/IpamDriver.ReleasePool", {"PoolID": pid})
    assert value(m, "swarmnet_ipam_pools", space="local") == 0
    assert value(m, "swarmnet_ipam_addresses_free", space="local", pool="10.40.0.0/24") is None


class Unreachable(MemoryKV):
    def list(self, prefix: str) -> dict[str, bytes]:
        if prefix.startswith("/swarmnet/v1/ipam/global"):
            raise ConnectionError("etcd is down")
        return super().list(prefix)


def test_a_part_that_cannot_be_read_is_left_out_and_counted() -> None:
    local, shared = MemoryKV(), Unreachable()
    store_app = create_app(from_env(ON), kernel=FakeKernel(), local=local, shared=shared)
    m = store_app.extensions[EXTENSION]
    assert value(m, "swarmnet_ipam_pools", space="local") is None
    assert value(m, "swarmnet_scrape_errors_total", part="ipam") == 1
    assert value(m, "swarmnet_networks") == 0  # the other parts still answer


# -- IPsec -----------------------------------------------------------------------------------


def test_ipsec_sas_generation_age_and_rotations() -> None:
    hub, shared = Hub(), MemoryKV()
    base = from_env(ON)
    fast = EncryptionConfig(poll_interval=0, prune_grace=0, rotation_min_gap=0)
    nodes = []
    for vtep in ("192.0.2.1", "192.0.2.2"):
        s = replace(base, driver=replace(base.driver, data_path_addr=ipaddress.IPv4Address(vtep),
                                         encryption=fast))
        ipsec = FakeIpsec()
        app = create_app(s, kernel=FakeKernel(), local=MemoryKV(), shared=shared,
                         control=hub.plane(), ipsec=ipsec)
        nodes.append((Plugin(app.test_client(), FakeKernel(), shared), app.extensions[EXTENSION]))
    body = create_body(encrypted="")
    for n, (p, _) in enumerate(nodes):
        p.ok("/NetworkDriver.CreateNetwork", body)
        p.ok("/NetworkDriver.CreateEndpoint", endpoint_body(EP if n == 0 else EP2, NET,
                                                            f"10.10.0.{n + 2}/24"))
        p.ok("/NetworkDriver.Join", join_body(EP if n == 0 else EP2))
    hub.deliver()
    (p, m) = nodes[0]
    assert value(m, "swarmnet_ipsec_supported") == 1
    assert value(m, "swarmnet_ipsec_sas") == 2  # one in, one out, to the one peer
    assert value(m, "swarmnet_ipsec_key_generation") == 1
    age = value(m, "swarmnet_ipsec_key_age_seconds")
    assert age is not None and 0 <= age < 60
    p.ok("/Swarmnet.RotateKeys")
    assert value(m, "swarmnet_ipsec_key_rotations_total", trigger="request") == 1
    assert value(m, "swarmnet_ipsec_key_generation") == 2
    assert value(nodes[1][1], "swarmnet_ipsec_key_rotations_total", trigger="request") == 0
    assert value(m, "swarmnet_ipsec_failures_total", what="rotation") == 0


class FailingUpdates(MemoryKV):
    def update(self, key: str, fn: Any) -> bytes | None:
        raise ConnectionError("etcd is down")


def store(kv: MemoryKV) -> IpsecStore:
    return IpsecStore(kv, StoreLayout(STORE_ROOT))


def test_a_failed_rotation_is_counted_and_a_refused_one_is_not() -> None:
    obs = Observer(CollectorRegistry())
    config = EncryptionConfig(poll_interval=0)
    enc = Encryption(FakeIpsec(), store(MemoryKV()), lambda: None, config)
    enc.events = obs
    with pytest.raises(Exception, match="no IPsec keys"):
        enc.rotate()  # a refusal (409): nothing to rotate yet
    assert obs.ipsec_failures.labels("rotation")._value.get() == 0
    enc = Encryption(
        FakeIpsec(), store(FailingUpdates()), lambda: None, EncryptionConfig(poll_interval=0)
    )
    enc.events = obs
    with pytest.raises(ConnectionError):
        enc.rotate()
    assert obs.ipsec_failures.labels("rotation")._value.get() == 1


# -- load balancing and the process ------------------------------------------------------------


def test_load_balancing_gauges_from_its_status() -> None:
    status: Mapping[str, Any] = {
        "State": "on",
        "Sandboxes": {"Programmed": 3, "Waiting": 1, "GivenUp": 0},
        "Collector": {"Role": "leader"},
        "Networks": [
            {"NetworkID": NET, "SandboxesProgrammed": 2, "Services": [
                {"Backends": [{"IP": "10.0.0.3"}, {"IP": "10.0.0.4"}]},
                {"Backends": [{"IP": "10.0.0.5"}]},
            ]},
        ],
    }
    _, m, app = build()
    registry = CollectorRegistry()
    svc = app.extensions["swarmnet"]
    store = MemoryKV()
    layout = StoreLayout(STORE_ROOT)
    registry.register(StateCollector(svc.network, lambda: status, store, store, layout, m.observer))
    got = registry.get_sample_value
    assert got("swarmnet_lb_enabled") == 1
    assert got("swarmnet_lb_collector_leader") == 1
    assert got("swarmnet_lb_vips", {"network": NET}) == 2
    assert got("swarmnet_lb_backends", {"network": NET}) == 3
    assert got("swarmnet_lb_sandboxes_programmed", {"network": NET}) == 2
    assert got("swarmnet_lb_sandboxes", {"state": "waiting"}) == 1
    # The app's own status (no IPVS in the fake kernel): off, and nothing per network.
    assert value(m, "swarmnet_lb_enabled") == 0
    assert value(m, "swarmnet_lb_vips", network=NET) is None


def test_the_process_collector_is_there() -> None:
    _, m, _ = build()
    for name in ("process_resident_memory_bytes", "process_open_fds",
                 "process_cpu_seconds_total"):
        v = value(m, name)
        assert v is not None and v > 0, name
    text = generate_latest(m.registry).decode()
    assert 'swarmnet_build_info{version="' in text
