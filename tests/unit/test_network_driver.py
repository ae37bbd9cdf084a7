"""NetworkDriver protocol through the Flask app, with the fake kernel and the memory store."""

from __future__ import annotations

import ipaddress

import pytest

from core.errors import Internal
from driver import names
from driver.kernel.fake import FakeKernel
from driver.kernel.port import NetworkSpec, Peer
from plugin.app import create_app
from plugin.settings import from_env
from plugin.store.memory import MemoryKV
from tests.unit.conftest import Plugin, RecordingControlPlane, make_plugin

NET = "q1w2e3r4t5y6u7i8o9p0asdfg"  # swarm network IDs: 25 lower-case alphanumerics
NET2 = "zxcvbnmlkjhgfdsapoiuytrew"
EP = "a" * 64
EP2 = "b" * 64


def create_body(net: str = NET, vni: str | None = "300", **generic: str) -> dict:
    g = dict(generic)
    if vni is not None:
        g["swarmnet.vni"] = vni
    return {
        "NetworkID": net,
        "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": g},
        "IPv4Data": [
            {"AddressSpace": "GlobalDefault", "Pool": "10.10.0.0/24", "Gateway": "10.10.0.1/24"}
        ],
        "IPv6Data": [],
    }


def endpoint_body(
    ep: str = EP, net: str = NET, address: str = "10.10.0.2/24", mac: str = ""
) -> dict:
    return {
        "NetworkID": net,
        "EndpointID": ep,
        "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
        "Options": {},
    }


def join_body(ep: str = EP, net: str = NET) -> dict:
    return {
        "NetworkID": net,
        "EndpointID": ep,
        "SandboxKey": "/var/run/docker/netns/abc",
        "Options": {},
    }


def test_activate_lists_both_protocols(plugin: Plugin) -> None:
    assert plugin.ok("/Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}


def test_capabilities_global_by_default_and_local_when_set() -> None:
    assert make_plugin().ok("/NetworkDriver.GetCapabilities") == {
        "Scope": "global",
        "ConnectivityScope": "global",
    }
    assert make_plugin({"SCOPE": "local"}).ok("/NetworkDriver.GetCapabilities")["Scope"] == "local"


def test_allocate_network_echoes_options_and_adds_a_vni_in_range(plugin: Plugin) -> None:
    body = {"NetworkID": NET, "Options": {"foo": "bar"}, "IPv4Data": [], "IPv6Data": []}
    reply = plugin.ok("/NetworkDriver.AllocateNetwork", body)
    vni = int(reply["Options"]["swarmnet.vni"])
    assert 256 <= vni <= 4095
    assert reply["Options"]["foo"] == "bar"
    # Docker retries: the same network gets the same VNI.
    assert plugin.ok("/NetworkDriver.AllocateNetwork", body) == reply
    other = plugin.ok("/NetworkDriver.AllocateNetwork", {**body, "NetworkID": NET2})
    assert other["Options"]["swarmnet.vni"] != reply["Options"]["swarmnet.vni"]


def test_free_network_releases_the_vni_for_reuse_after_the_range_wraps() -> None:
    plugin = make_plugin({"VNI_RANGE": "500-501"})
    first = plugin.ok("/NetworkDriver.AllocateNetwork", {"NetworkID": NET})["Options"][
        "swarmnet.vni"
    ]
    plugin.ok("/NetworkDriver.AllocateNetwork", {"NetworkID": NET2})
    status, reply = plugin.call("/NetworkDriver.AllocateNetwork", {"NetworkID": "c" * 25})
    assert status == 507 and "VNI_RANGE" in reply["Err"]
    plugin.ok("/NetworkDriver.FreeNetwork", {"NetworkID": NET})
    plugin.ok("/NetworkDriver.FreeNetwork", {"NetworkID": NET})  # idempotent
    again = plugin.ok("/NetworkDriver.AllocateNetwork", {"NetworkID": "c" * 25})
    assert again["Options"]["swarmnet.vni"] == first


def test_explicit_vni_in_use_is_a_conflict_naming_the_owner(plugin: Plugin) -> None:
    plugin.ok(
        "/NetworkDriver.AllocateNetwork", {"NetworkID": NET, "Options": {"swarmnet.vni": "777"}}
    )
    status, reply = plugin.call(
        "/NetworkDriver.AllocateNetwork", {"NetworkID": NET2, "Options": {"swarmnet.vni": "777"}}
    )
    assert status == 409 and names.short(NET) in reply["Err"]


def test_create_network_programs_the_kernel_with_vni_mtu_and_gateway(plugin: Plugin) -> None:
    plugin.ok("/NetworkDriver.CreateNetwork", create_body())
    plugin.ok("/NetworkDriver.CreateNetwork", create_body())  # idempotent
    spec = plugin.kernel.networks[names.short(NET)].spec
    assert spec.vni == 300
    assert spec.mtu == 1450  # underlay 1500 - 50
    assert [str(a) for a in spec.bridge_addresses] == ["10.10.0.1/24"]
    assert spec.vxlan_port == 4789
    assert spec.tuned  # the data-path settings are the default


def test_tuning_off_is_kept_with_the_network(plugin: Plugin) -> None:
    plugin.ok("/NetworkDriver.CreateNetwork", create_body(**{"swarmnet.tuning": "off"}))
    assert not plugin.kernel.networks[names.short(NET)].spec.tuned


def test_mtu_option_is_honoured_and_validated(plugin: Plugin) -> None:
    plugin.ok(
        "/NetworkDriver.CreateNetwork",
        create_body(**{"com.docker.network.driver.mtu": "1400"}),
    )
    assert plugin.kernel.networks[names.short(NET)].spec.mtu == 1400
    status, reply = plugin.call(
        "/NetworkDriver.CreateNetwork",
        create_body(NET2, "301", **{"com.docker.network.driver.mtu": "jumbo"}),
    )
    assert status == 400 and "com.docker.network.driver.mtu" in reply["Err"]
    assert names.short(NET2) not in plugin.kernel.networks


def test_overlapping_subnets_on_two_networks_both_work(plugin: Plugin) -> None:
    plugin.ok("/NetworkDriver.CreateNetwork", create_body(NET, "300"))
    plugin.ok("/NetworkDriver.CreateNetwork", create_body(NET2, "301"))
    plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body(EP, NET))
    plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body(EP2, NET2))
    assert len(plugin.kernel.networks) == 2


def test_local_scope_create_network_allocates_its_own_vni_and_delete_releases_it() -> None:
    plugin = make_plugin({"SCOPE": "local", "VNI_RANGE": "600-600"})
    plugin.ok("/NetworkDriver.CreateNetwork", create_body(vni=None))
    assert plugin.kernel.networks[names.short(NET)].spec.vni == 600
    plugin.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    plugin.ok("/NetworkDriver.CreateNetwork", create_body(NET2, vni=None))
    assert plugin.kernel.networks[names.short(NET2)].spec.vni == 600


def test_encrypted_network_fails_closed(plugin: Plugin) -> None:
    """Swarm, a kernel without ESP: the manager allocates and the node records the network as
    refused, with nothing in the kernel; every endpoint on it is refused with the reason
    (a refused AllocateNetwork or CreateNetwork would reach no user in swarm)."""
    plugin.ok("/NetworkDriver.AllocateNetwork", {"NetworkID": NET, "Options": {"encrypted": ""}})
    plugin.ok("/NetworkDriver.CreateNetwork", create_body(encrypted="true"))
    # CreateEndpoint records nothing and Join refuses: dockerd detaches a container from a
    # swarm network only once it has a sandbox, which a failed CreateEndpoint never gets.
    assert plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body()) == {}
    status, reply = plugin.call("/NetworkDriver.Join", join_body())
    assert status == 501 and "--opt encrypted needs IPsec ESP" in reply["Err"], reply
    assert "clear" in reply["Err"]
    plugin.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    plugin.ok("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    assert plugin.kernel.networks == {}
    assert plugin.store.list("/swarmnet/v1/local/networks/") == {}
    assert plugin.store.list("/swarmnet/v1/local/endpoints/") == {}
    plugin.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    plugin.ok("/NetworkDriver.FreeNetwork", {"NetworkID": NET})
    assert plugin.store.list("/swarmnet/v1/local/refused/") == {}
    # Removed, the network is unknown here again (no refusal left behind).
    status, reply = plugin.call("/NetworkDriver.CreateEndpoint", endpoint_body())
    assert (status, reply) == (400, {"Err": "NetworkID: unknown network q1w2e3r4t5y6"})


def test_encrypted_network_is_refused_by_create_network_standalone() -> None:
    # No swarm: `docker network create` waits for CreateNetwork, so its 501 reaches the user.
    plugin = make_plugin({"SCOPE": "local"})
    status, reply = plugin.call("/NetworkDriver.CreateNetwork", create_body(encrypted="true"))
    assert status == 501 and "clear" in reply["Err"]
    assert plugin.kernel.networks == {}
    assert plugin.store.list("/swarmnet/v1/local/") == {}


def test_endpoint_lifecycle(plugin: Plugin) -> None:
    plugin.ok("/NetworkDriver.CreateNetwork", create_body())
    reply = plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body())
    assert reply == {"Interface": {"MacAddress": "02:42:0a:0a:00:02"}}
    assert plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body()) == reply  # retry

    join = plugin.ok("/NetworkDriver.Join", join_body())
    assert join["InterfaceName"] == {"SrcName": names.veth_host(EP), "DstPrefix": "eth"}
    # No gateway, so egress goes through docker_gwbridge.
    assert "Gateway" not in join and "StaticRoutes" not in join
    assert plugin.ok("/NetworkDriver.Join", join_body()) == join  # retry
    plugin.kernel.move_to_container(EP)

    info = plugin.ok("/NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
    assert info["Value"]["vni"] == 300 and info["Value"]["joined"] is True

    plugin.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    plugin.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    assert plugin.kernel.endpoint_ids(NET) == set()
    plugin.ok("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    plugin.ok("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    plugin.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    plugin.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert plugin.kernel.networks == {}
    assert plugin.kernel.host_links == set()
    assert plugin.store.list("/swarmnet/v1/local/") == {}


def test_mac_given_by_docker_is_kept_and_not_echoed(plugin: Plugin) -> None:
    plugin.ok("/NetworkDriver.CreateNetwork", create_body())
    reply = plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body(mac="02:AA:bb:cc:dd:ee"))
    assert reply == {}
    plugin.ok("/NetworkDriver.Join", join_body())
    ep = plugin.kernel.networks[names.short(NET)].endpoints[names.short(EP)]
    assert ep.mac == "02:aa:bb:cc:dd:ee"


def test_join_failure_leaves_no_veth(plugin: Plugin) -> None:
    plugin.ok("/NetworkDriver.CreateNetwork", create_body())
    plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body())

    class Boom(Internal):
        pass

    orig_put = plugin.store.put

    def failing_put(key: str, value: bytes) -> None:
        if "/endpoints/" in key:
            raise Boom("store down")
        orig_put(key, value)

    plugin.store.put = failing_put  # type: ignore[method-assign]
    status, reply = plugin.call("/NetworkDriver.Join", join_body())
    assert status == 500 and "store down" in reply["Err"]
    assert plugin.kernel.endpoint_ids(NET) == set()
    assert plugin.kernel.host_links == set()


def test_discover_new_records_this_node_and_ignores_other_types(plugin: Plugin) -> None:
    plugin.ok(
        "/NetworkDriver.DiscoverNew",
        {"DiscoveryType": 1, "DiscoveryData": {"Address": "192.0.2.10", "Self": True}},
    )
    plugin.ok("/NetworkDriver.DiscoverNew", {"DiscoveryType": 2, "DiscoveryData": {"Keys": []}})
    plugin.ok(
        "/NetworkDriver.DiscoverDelete",
        {"DiscoveryType": 1, "DiscoveryData": {"Address": "192.0.2.11", "Self": False}},
    )
    plugin.ok("/NetworkDriver.CreateNetwork", create_body())
    assert str(plugin.kernel.networks[names.short(NET)].spec.local_vtep) == "192.0.2.10"


def test_external_connectivity_calls_are_accepted(plugin: Plugin) -> None:
    body = {"NetworkID": NET, "EndpointID": EP, "Options": {}}
    plugin.ok("/NetworkDriver.ProgramExternalConnectivity", body)
    plugin.ok("/NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP})


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/NetworkDriver.CreateNetwork", b"{not json", "JSON"),
        ("/NetworkDriver.CreateNetwork", b"[1, 2]", "JSON object"),
        ("/NetworkDriver.CreateNetwork", b"{}", "NetworkID"),
        ("/NetworkDriver.CreateNetwork", b'{"NetworkID": 7}', "NetworkID"),
        ("/NetworkDriver.CreateNetwork", b'{"NetworkID": "../../etc"}', "NetworkID"),
        (
            "/NetworkDriver.CreateNetwork",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "IPv4Data": [{"Pool": "10.0.0.0/33"}]}',
            "IPv4Data[0].Pool",
        ),
        (
            "/NetworkDriver.CreateNetwork",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "IPv4Data": [{"Pool": "10.0.0.0/24",'
            b' "Gateway": "10.0.0.1"}]}',
            "IPv4Data[0].Gateway",
        ),
        (
            "/NetworkDriver.CreateNetwork",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "Options": '
            b'{"com.docker.network.generic": {"swarmnet.vni": "0"}}}',
            "swarmnet.vni",
        ),
        (
            "/NetworkDriver.CreateNetwork",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "Options": '
            b'{"com.docker.network.generic": {"x": {"nested": 1}}}}',
            "com.docker.network.generic.x",
        ),
        ("/NetworkDriver.CreateEndpoint", b"", "NetworkID"),
        (
            "/NetworkDriver.CreateEndpoint",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "EndpointID": "'
            + b"a" * 64
            + b'", "Interface": {"Address": "10.0.0.2/24", "MacAddress": "zz:zz"}}',
            "Interface.MacAddress",
        ),
        (
            "/NetworkDriver.CreateEndpoint",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "EndpointID": "'
            + b"a" * 64
            + b'", "Interface": {"Address": "10.0.0.300/24"}}',
            "Interface.Address",
        ),
        (
            "/NetworkDriver.CreateEndpoint",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "EndpointID": "'
            + b"a" * 64
            + b'", "Interface": {"Address": "10.0.0.2/24"}}',
            "unknown network",
        ),
        (
            "/NetworkDriver.Join",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "EndpointID": "' + b"a" * 64 + b'"}',
            "SandboxKey",
        ),
        ("/NetworkDriver.DiscoverNew", b'{"DiscoveryType": "one"}', "DiscoveryType"),
        (
            "/NetworkDriver.DiscoverNew",
            b'{"DiscoveryType": 1, "DiscoveryData": {"Address": "nope"}}',
            "DiscoveryData.Address",
        ),
        (
            "/NetworkDriver.EndpointOperInfo",
            b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg"}',
            "EndpointID",
        ),
    ],
)
def test_bad_input_gets_400_naming_the_field(
    plugin: Plugin, path: str, raw: bytes, field: str
) -> None:
    status, reply = plugin.call(path, raw=raw)
    assert status == 400, reply
    assert set(reply) == {"Err"}
    assert field in reply["Err"]
    assert "Traceback" not in reply["Err"]
    assert plugin.kernel.networks == {}


def test_join_of_unknown_endpoint_is_400(plugin: Plugin) -> None:
    plugin.ok("/NetworkDriver.CreateNetwork", create_body())
    status, reply = plugin.call("/NetworkDriver.Join", join_body())
    assert status == 400 and "EndpointID" in reply["Err"]
    assert plugin.kernel.host_links == set()


def test_unknown_paths_are_404_in_each_protocols_error_shape(plugin: Plugin) -> None:
    status, reply = plugin.call("/NetworkDriver.Frobnicate", {})
    assert status == 404 and "not implemented" in reply["Err"]
    status, reply = plugin.call("/IpamDriver.Frobnicate", {})
    assert status == 404 and "not implemented" in reply["Error"]


def test_state_survives_a_restart_and_reconcile_repairs_the_kernel() -> None:
    store, kernel = MemoryKV(), FakeKernel()
    first = make_plugin(store=store, kernel=kernel)
    first.ok("/NetworkDriver.CreateNetwork", create_body())
    first.ok("/NetworkDriver.CreateEndpoint", endpoint_body())
    first.ok("/NetworkDriver.Join", join_body())
    kernel.move_to_container(EP)
    # The kernel lost the network (e.g. host reboot) and gained an orphan of ours.
    kernel.remove_network(NET)
    kernel.ensure_network(NetworkSpec("deadbeef0000" + "0" * 13, 999, 1450, 4789))
    kernel.host_links.add(names.veth_host("f" * 64))

    second = make_plugin(store=store, kernel=kernel)
    assert names.short(NET) in kernel.networks
    assert "deadbeef0000" not in kernel.networks
    assert kernel.host_links == set()
    info = second.ok("/NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
    assert info["Value"]["joined"] is True


def test_reconcile_republishes_live_endpoints_and_withdraws_those_whose_veth_is_gone() -> None:
    store, kernel = MemoryKV(), FakeKernel()
    first = make_plugin(store=store, kernel=kernel)
    first.ok(
        "/NetworkDriver.DiscoverNew",
        {"DiscoveryType": 1, "DiscoveryData": {"Address": "192.0.2.10", "Self": True}},
    )
    first.ok("/NetworkDriver.CreateNetwork", create_body())
    for ep, ip in ((EP, "10.10.0.2/24"), (EP2, "10.10.0.3/24")):
        first.ok("/NetworkDriver.CreateEndpoint", endpoint_body(ep, address=ip))
        first.ok("/NetworkDriver.Join", join_body(ep))
        kernel.move_to_container(ep)
    # EP2's container died while dockerd was down: its veth pair is gone, no Leave came.
    kernel.networks[names.short(NET)].endpoints.pop(names.short(EP2))

    control = RecordingControlPlane()
    settings = from_env({})
    create_app(settings, kernel=kernel, local=store, shared=store, control=control)
    assert list(control.published) == [EP]
    assert control.withdrawals == [EP2]
    assert control.watched == {NET}


def test_status_reports_networks_endpoints_and_peers_without_secrets() -> None:
    control = RecordingControlPlane()
    store, kernel = MemoryKV(), FakeKernel()
    app = create_app(
        from_env({"DATA_PATH_ADDR": "192.0.2.1"}),
        kernel=kernel,
        local=store,
        shared=store,
        control=control,
    )
    plugin = Plugin(client=app.test_client(), kernel=kernel, store=store)
    plugin.ok("/NetworkDriver.CreateNetwork", create_body())
    plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body())
    plugin.ok("/NetworkDriver.Join", join_body())
    plugin.ok("/NetworkDriver.CreateEndpoint", endpoint_body(EP2, address="10.10.0.3/24"))
    kernel.ensure_peer(
        NET,
        Peer(
            ipaddress.ip_address("10.10.0.9"),
            "02:42:0a:0a:00:09",
            ipaddress.ip_address("192.0.2.2"),
        ),
    )
    status = plugin.ok("/Swarmnet.Status")
    assert status["VTEP"] == "192.0.2.1" and status["ControlPlane"] == "recording (test)"
    assert status["Networks"] == [
        {
            "NetworkID": NET,
            "VNI": 300,
            "MTU": 1450,
            "Internal": False,
            "Encrypted": False,
            "Endpoints": 2,
            "Joined": 1,
            "RemotePeers": 1,
            "Broken": "",
        }
    ]


def test_a_failed_create_network_in_local_scope_releases_its_vni() -> None:
    kernel = FakeKernel()
    plugin = make_plugin({"SCOPE": "local", "VNI_RANGE": "700-700"}, kernel=kernel)

    class KernelDown(Internal):
        pass

    kernel.fail_next["ensure_network"] = KernelDown("netlink said no")
    status, reply = plugin.call("/NetworkDriver.CreateNetwork", create_body(vni=None))
    assert status == 500 and "netlink said no" in reply["Err"]
    assert plugin.store.list("/swarmnet/v1/local/") == {}
    # The only VNI in the range is free again.
    plugin.ok("/NetworkDriver.CreateNetwork", create_body(NET2, vni=None))
    assert kernel.networks[names.short(NET2)].spec.vni == 700
