"""IpamDriver protocol through the Flask app: the call sequences dockerd makes."""

from __future__ import annotations

import pytest

from tests.unit.conftest import Plugin, make_plugin

GW = {"RequestAddressType": "com.docker.network.gateway"}
SERIAL = {"com.docker.network.ipam.serial": "true"}


def test_capabilities_and_address_spaces(plugin: Plugin) -> None:
    caps = plugin.ok("/IpamDriver.GetCapabilities")
    assert caps == {"RequiresMACAddress": True, "RequiresRequestReplay": True}
    spaces = plugin.ok("/IpamDriver.GetDefaultAddressSpaces")
    assert spaces["LocalDefaultAddressSpace"] != spaces["GlobalDefaultAddressSpace"]


def test_manager_then_node_sequence(plugin: Plugin) -> None:
    spaces = plugin.ok("/IpamDriver.GetDefaultAddressSpaces")
    glob, local = spaces["GlobalDefaultAddressSpace"], spaces["LocalDefaultAddressSpace"]

    # Manager: dynamic pool in the global space, serial gateway and task addresses.
    pool = plugin.ok("/IpamDriver.RequestPool", {"AddressSpace": glob, "Pool": "", "Options": {}})
    assert pool["Pool"] == "198.18.0.0/24"
    gw = plugin.ok(
        "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Options": {**GW, **SERIAL}}
    )
    assert gw["Address"] == "198.18.0.1/24"
    task = plugin.ok("/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Options": SERIAL})
    assert task["Address"] == "198.18.0.2/24"

    # Node (the manager too): the same pool, explicit, in the local space, then the
    # explicit gateway and endpoint addresses. All must succeed.
    lpool = plugin.ok(
        "/IpamDriver.RequestPool", {"AddressSpace": local, "Pool": "198.18.0.0/24", "Options": {}}
    )
    assert lpool["Pool"] == "198.18.0.0/24"
    assert (
        plugin.ok(
            "/IpamDriver.RequestAddress",
            {"PoolID": lpool["PoolID"], "Address": "198.18.0.1", "Options": GW},
        )["Address"]
        == "198.18.0.1/24"
    )
    assert (
        plugin.ok(
            "/IpamDriver.RequestAddress", {"PoolID": lpool["PoolID"], "Address": "198.18.0.2"}
        )["Address"]
        == "198.18.0.2/24"
    )

    # Release on both sides, twice (idempotent).
    for pid in (lpool["PoolID"], pool["PoolID"]):
        for _ in range(2):
            plugin.ok("/IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": "198.18.0.2"})
        plugin.ok("/IpamDriver.ReleasePool", {"PoolID": pid})
        plugin.ok("/IpamDriver.ReleasePool", {"PoolID": pid})


def test_next_networks_get_consecutive_subnets_and_released_ones_come_back_after_wrap() -> None:
    plugin = make_plugin(
        {"DEFAULT_ADDR_POOLS": "10.99.0.0/22", "DEFAULT_ADDR_POOL_MASK_LENGTH": "24"}
    )
    glob = plugin.ok("/IpamDriver.GetDefaultAddressSpaces")["GlobalDefaultAddressSpace"]

    def request() -> dict:
        return plugin.ok("/IpamDriver.RequestPool", {"AddressSpace": glob, "Pool": ""})

    a, b, c = request(), request(), request()
    assert [p["Pool"] for p in (a, b, c)] == ["10.99.0.0/24", "10.99.1.0/24", "10.99.2.0/24"]
    plugin.ok("/IpamDriver.ReleasePool", {"PoolID": b["PoolID"]})
    # In order after the last handed out, then wrap around to the released one.
    assert request()["Pool"] == "10.99.3.0/24"
    assert request()["Pool"] == "10.99.1.0/24"
    status, reply = plugin.call("/IpamDriver.RequestPool", {"AddressSpace": glob, "Pool": ""})
    assert status == 507 and "10.99.0.0/22" in reply["Error"]


def test_explicit_subnet_range_and_aux_addresses(plugin: Plugin) -> None:
    local = plugin.ok("/IpamDriver.GetDefaultAddressSpaces")["LocalDefaultAddressSpace"]
    pool = plugin.ok(
        "/IpamDriver.RequestPool",
        {"AddressSpace": local, "Pool": "10.50.0.0/16", "SubPool": "10.50.7.0/24"},
    )
    pid = pool["PoolID"]
    # As Docker's allocator: with --ip-range, dynamic addresses, the gateway's
    # included, come from the range (10.50.7.0 is a usable address in a /16).
    gw = plugin.ok("/IpamDriver.RequestAddress", {"PoolID": pid, "Options": GW})
    assert gw["Address"] == "10.50.7.0/16"
    # Aux address: libnetwork reserves it with an explicit request.
    plugin.ok("/IpamDriver.RequestAddress", {"PoolID": pid, "Address": "10.50.7.1"})
    got = plugin.ok("/IpamDriver.RequestAddress", {"PoolID": pid})["Address"]
    assert got == "10.50.7.2/16"
    # An explicit address outside the range but inside the pool is honoured.
    assert (
        plugin.ok("/IpamDriver.RequestAddress", {"PoolID": pid, "Address": "10.50.200.9"})[
            "Address"
        ]
        == "10.50.200.9/16"
    )


def test_overlap_with_another_pool_names_it(plugin: Plugin) -> None:
    local = plugin.ok("/IpamDriver.GetDefaultAddressSpaces")["LocalDefaultAddressSpace"]
    plugin.ok("/IpamDriver.RequestPool", {"AddressSpace": local, "Pool": "10.60.0.0/16"})
    status, reply = plugin.call(
        "/IpamDriver.RequestPool", {"AddressSpace": local, "Pool": "10.60.5.0/24"}
    )
    assert status == 400 and "10.60.0.0/16" in reply["Error"]


def test_v6_pool_with_subnet_works_even_with_v6_false(plugin: Plugin) -> None:
    glob = plugin.ok("/IpamDriver.GetDefaultAddressSpaces")["GlobalDefaultAddressSpace"]
    pool = plugin.ok(
        "/IpamDriver.RequestPool", {"AddressSpace": glob, "Pool": "fd00:1::/64", "V6": False}
    )
    got = plugin.ok("/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Options": GW})
    assert got["Address"] == "fd00:1::1/64"


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/IpamDriver.RequestPool", b"{nope", "JSON"),
        ("/IpamDriver.RequestPool", b'{"AddressSpace": 5}', "AddressSpace"),
        ("/IpamDriver.RequestPool", b'{"Pool": "10.0.0.0/99"}', "Pool"),
        ("/IpamDriver.RequestPool", b'{"Pool": "10.0.0.1/24"}', "Pool"),
        ("/IpamDriver.RequestPool", b'{"SubPool": "10.0.0.0/24"}', "SubPool"),
        ("/IpamDriver.RequestAddress", b"{}", "PoolID"),
        ("/IpamDriver.RequestAddress", b'{"PoolID": "x/never"}', "PoolID"),
        ("/IpamDriver.ReleaseAddress", b'{"PoolID": "x"}', "Address"),
        ("/IpamDriver.ReleasePool", b'{"PoolID": 3}', "PoolID"),
    ],
)
def test_bad_input_gets_400_with_error_naming_the_field(
    plugin: Plugin, path: str, raw: bytes, field: str
) -> None:
    status, reply = plugin.call(path, raw=raw)
    assert status == 400, reply
    # "Error" for the IPAM protocol, "Err" for Docker's plugin client, which reads only
    # that on a non-200 reply and would otherwise show the user the raw JSON.
    assert set(reply) == {"Error", "Err"} and reply["Err"] == reply["Error"]
    assert field in reply["Error"]


def test_subpool_outside_pool_and_address_outside_pool_allocate_nothing(plugin: Plugin) -> None:
    local = plugin.ok("/IpamDriver.GetDefaultAddressSpaces")["LocalDefaultAddressSpace"]
    status, reply = plugin.call(
        "/IpamDriver.RequestPool",
        {"AddressSpace": local, "Pool": "10.70.0.0/24", "SubPool": "10.71.0.0/24"},
    )
    assert status == 400 and "SubPool" in reply["Error"]
    before = dict(plugin.store.data)
    pool = plugin.ok("/IpamDriver.RequestPool", {"AddressSpace": local, "Pool": "10.70.0.0/24"})
    after_pool = dict(plugin.store.data)
    status, reply = plugin.call(
        "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.80.0.5"}
    )
    assert status == 400 and "Address" in reply["Error"]
    assert plugin.store.data == after_pool != before
