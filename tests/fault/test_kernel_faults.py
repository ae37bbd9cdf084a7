"""Faults on the real kernel (root): a network that cannot be rebuilt, a VTEP the
kernel refuses, and hundreds of full lifecycles that must leave nothing behind.

Each test works in a throwaway namespace standing in for the host
(tests/kernel/lab.py); the machine's own host namespace is never touched.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from pyroute2.netlink.exceptions import NetlinkError

from core.layout import StoreLayout
from driver import names
from driver.kernel import nsfs
from driver.records import NetworkRecord, VtepRecord, decode, encode
from driver.service import NetworkDriverService
from plugin.app import STORE_ROOT, create_app
from plugin.settings import from_env
from plugin.store.sqlite import SqliteKV
from tests.kernel.lab import NetlinkHost, addresses, ipr_in, link, mounts_under

LAYOUT = StoreLayout(STORE_ROOT)
NET_A = "a" * 25
NET_B = "b" * 25
EP = "e" * 64
# How many full lifecycles the leak test runs (a few seconds each hundred).
LIFECYCLES = int(os.environ.get("SWARMNET_FAULT_LIFECYCLES", "300"))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[NetlinkHost]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    made = NetlinkHost(tmp_path / "host")
    try:
        yield made
    finally:
        made.close()


def start(host: NetlinkHost, store: SqliteKV, **env: str) -> Flask:
    settings = from_env({"SCOPE": "local", "VNI_RANGE": "256-400", **env})
    return create_app(settings, kernel=host.kernel, local=store, shared=store)


def service(app: Flask) -> NetworkDriverService:
    network: NetworkDriverService = app.extensions["swarmnet"].network
    return network


def call(app: Flask, path: str, body: Any = None) -> tuple[int, Any]:
    resp = app.test_client().post(path, data=json.dumps(body or {}).encode())
    return resp.status_code, resp.get_json(force=True, silent=True)


def ok(app: Flask, path: str, body: Any = None) -> Any:
    status, reply = call(app, path, body)
    assert status == 200, (path, status, reply)
    return reply


def create(app: Flask, network_id: str, subnet: str) -> None:
    gateway = str(ipaddress.ip_network(subnet)[1]) + "/" + subnet.split("/")[1]
    ok(
        app,
        "/NetworkDriver.CreateNetwork",
        {
            "NetworkID": network_id,
            "Options": {},
            "IPv4Data": [{"Pool": subnet, "Gateway": gateway}],
        },
    )


def links(host: NetlinkHost, network_id: str) -> set[str]:
    with ipr_in(host.netns_dir / names.netns(network_id)) as ipr:
        return {str(m.get("ifname")) for m in ipr.link("dump")}


def vxlan_local(host: NetlinkHost, network_id: str) -> str | None:
    with ipr_in(host.netns_dir / names.netns(network_id)) as ipr:
        data = link(ipr, names.VXLAN).get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        local = data.get_attr("IFLA_VXLAN_LOCAL")
        return None if local in (None, "0.0.0.0") else str(local)


def add_blocker(host: NetlinkHost, vni: int) -> None:
    """A VXLAN device of someone else's with our VNI and port, in the host namespace."""
    with ipr_in(host.ns) as ipr:
        # The namespace we just unmounted is torn down in the background: until
        # then its device still holds the VNI. Bounded: 100 tries.
        for _ in range(100):
            try:
                ipr.link("add", ifname="blocker", kind="vxlan", vxlan_id=vni, vxlan_port=4789)
                return
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            time.sleep(0.05)
    raise AssertionError(f"VNI {vni} never became free")


def wait_vni_free(host: NetlinkHost, vni: int) -> None:
    """Until the namespaces unmounted above are torn down (in the background, slowly on a
    busy machine), their devices hold their VNIs: a restart then would find them taken."""
    add_blocker(host, vni)
    remove_blocker(host)


def remove_blocker(host: NetlinkHost) -> None:
    with ipr_in(host.ns) as ipr:
        ipr.link("del", index=link(ipr, "blocker")["index"])


def statuses(app: Flask) -> dict[str, str]:
    return {n["NetworkID"]: n["Broken"] for n in ok(app, "/Swarmnet.Status")["Networks"]}


def test_one_network_that_cannot_be_rebuilt_leaves_the_others_up(
    host: NetlinkHost, tmp_path: Path
) -> None:
    store = SqliteKV(tmp_path / "state" / "store.sqlite")
    app = start(host, store)
    create(app, NET_A, "10.71.0.0/24")
    create(app, NET_B, "10.72.0.0/24")
    raw, raw_b = store.get(LAYOUT.network(NET_A)), store.get(LAYOUT.network(NET_B))
    assert raw is not None and raw_b is not None
    vni_a = decode(NetworkRecord, raw).vni
    service(app).close()

    # A reboot: the namespace files are gone; someone else took network A's VNI and port.
    for entry in host.netns_dir.iterdir():
        nsfs.remove(entry)
    wait_vni_free(host, decode(NetworkRecord, raw_b).vni)
    add_blocker(host, vni_a)

    app = start(host, store)  # must not raise
    try:
        assert {"br0", "vxlan0"} <= links(host, NET_B)
        broken = statuses(app)
        assert broken[NET_B] == ""
        assert "already used" in broken[NET_A], broken
        ok(
            app,
            "/NetworkDriver.CreateEndpoint",
            {"NetworkID": NET_A, "EndpointID": EP, "Interface": {"Address": "10.71.0.2/24"}},
        )
        status, reply = call(
            app, "/NetworkDriver.Join", {"NetworkID": NET_A, "EndpointID": EP, "SandboxKey": "/x"}
        )
        assert status == 503 and "could not be rebuilt" in reply["Err"], reply

        # The retry brings it back once the VNI is free again.
        remove_blocker(host)
        assert service(app).retry_broken() == [f"network {NET_A[:12]}: rebuilt"]
        assert statuses(app) == {NET_A: "", NET_B: ""}
        assert {"br0", "vxlan0"} <= links(host, NET_A)
    finally:
        service(app).close()


def test_a_vtep_the_kernel_refuses_never_costs_the_working_device(
    host: NetlinkHost, tmp_path: Path
) -> None:
    store = SqliteKV(tmp_path / "state" / "store.sqlite")
    app = start(host, store)
    create(app, NET_A, "10.71.0.0/24")
    assert vxlan_local(host, NET_A) is None
    # What the old DiscoverNew stored without a question; now it is a 400.
    status, _ = call(
        app,
        "/NetworkDriver.DiscoverNew",
        {"DiscoveryType": 1, "DiscoveryData": {"Address": "224.0.0.1", "Self": True}},
    )
    assert status == 400
    service(app).close()
    store.put(LAYOUT.vtep, encode(VtepRecord(vtep=ipaddress.ip_address("224.0.0.1"))))

    app = start(host, store)
    try:
        broken = statuses(app)
        assert broken[NET_A] != "", broken
        # The kernel refused the new device: the old one was made again, as it was.
        assert {"br0", "vxlan0"} <= links(host, NET_A)
        assert vxlan_local(host, NET_A) is None
    finally:
        service(app).close()


def counts(host: NetlinkHost, store: SqliteKV, app: Flask) -> dict[str, int]:
    with ipr_in(host.ns) as ipr:
        host_links = sum(1 for m in ipr.link("dump") if names.is_ours(str(m.get("ifname"))))
    rss_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    net = service(app)
    return {
        "host links": host_links,
        "namespaces": len(list(host.netns_dir.iterdir())) if host.netns_dir.exists() else 0,
        "mounts": len(mounts_under(host.root)),
        "store rows": len(store.list("/swarmnet/")),
        "fds": len(os.listdir("/proc/self/fd")),
        "service locks": len(net._locks),
        "kernel locks": len(host.kernel._locks),
        "rss kB": rss_kb,
    }


def lifecycle(app: Flask, i: int) -> None:
    net = f"{i:012d}" + "n" * 13
    ep = f"{i:012d}" + "e" * 52
    pool = ok(app, "/IpamDriver.RequestPool", {"AddressSpace": "SwarmnetLocal", "Options": {}})
    gateway = ok(
        app,
        "/IpamDriver.RequestAddress",
        {"PoolID": pool["PoolID"], "Options": {"RequestAddressType": "com.docker.network.gateway"}},
    )["Address"]
    ok(
        app,
        "/NetworkDriver.CreateNetwork",
        {"NetworkID": net, "Options": {}, "IPv4Data": [{"Pool": pool["Pool"], "Gateway": gateway}]},
    )
    address = ok(app, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"]})["Address"]
    ok(
        app,
        "/NetworkDriver.CreateEndpoint",
        {"NetworkID": net, "EndpointID": ep, "Interface": {"Address": address}},
    )
    ok(app, "/NetworkDriver.Join", {"NetworkID": net, "EndpointID": ep, "SandboxKey": "/x"})
    ok(app, "/NetworkDriver.Leave", {"NetworkID": net, "EndpointID": ep})
    ok(app, "/NetworkDriver.DeleteEndpoint", {"NetworkID": net, "EndpointID": ep})
    for addr in (address, gateway):
        ok(app, "/IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": addr})
    ok(app, "/NetworkDriver.DeleteNetwork", {"NetworkID": net})
    ok(app, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})


def test_hundreds_of_lifecycles_leave_nothing_behind(
    host: NetlinkHost, tmp_path: Path
) -> None:
    store = SqliteKV(tmp_path / "state" / "store.sqlite")
    app = start(host, store)
    try:
        for i in range(5):  # warm-up: imports, caches, the first SQLite pages
            lifecycle(app, i)
        host.kernel.settle()
        before = counts(host, store, app)
        for i in range(5, 5 + LIFECYCLES):
            lifecycle(app, i)
        host.kernel.settle()
        after = counts(host, store, app)
        print(f"\n{LIFECYCLES} lifecycles: before {before}\n{'':>16}after  {after}")
        rss_before, rss_after = before.pop("rss kB"), after.pop("rss kB")
        # pytest and pyroute2 open and close descriptors of their own: only growth is a leak.
        assert after.pop("fds") <= before.pop("fds")
        assert after == before
        assert after["service locks"] == 0 and after["kernel locks"] == 0
        # Loose: allocator arenas settle at their own pace; a leak per lifecycle would not.
        assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)
    finally:
        service(app).close()


def test_an_address_the_kernel_refuses_leaves_the_bridge_as_it_was(host: NetlinkHost) -> None:
    from driver.kernel.port import KernelError, NetworkSpec

    good = NetworkSpec(
        network_id=NET_A,
        vni=300,
        mtu=1450,
        vxlan_port=4789,
        bridge_addresses=(ipaddress.ip_interface("10.71.0.1/24"),),
        local_vtep=None,
    )
    host.kernel.ensure_network(good)
    bad = dataclasses.replace(good, bridge_addresses=(ipaddress.ip_interface("::/0"),))
    with pytest.raises(KernelError):
        host.kernel.ensure_network(bad)
    with ipr_in(host.netns_dir / names.netns(NET_A)) as ipr:
        kept = addresses(ipr, link(ipr, names.BRIDGE)["index"])
    assert kept == {ipaddress.ip_interface("10.71.0.1/24")}
