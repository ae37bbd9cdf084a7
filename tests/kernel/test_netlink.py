"""What only the real kernel can show: the exact layout, repair of half-made state,
undo on failure, no leaks, and packets actually flowing, locally and across VXLAN."""

from __future__ import annotations

import errno
import ipaddress
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from driver import mac, names
from driver.kernel import netlink as netlink_module
from driver.kernel import nsfs
from driver.kernel.netlink import NetlinkKernel, onelink
from driver.kernel.netlink import handles as netlink_handles
from driver.kernel.port import EndpointSpec, KernelError, NetworkSpec, Peer

from .conftest import require_root
from .lab import (
    NetlinkHost,
    addresses,
    ipr_in,
    link,
    mounts_under,
    nsexec,
    udp_echo,
    write_sysctl,
)

pytestmark = pytest.mark.kernel

NET = "a1" * 32
EP = "c3" * 32
EP2 = "d4" * 32
VNI = 4242
UNDERLAY = ipaddress.ip_interface("198.51.100.2/24")
GW = ipaddress.ip_interface("10.10.0.1/24")
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


def net_spec(
    vni: int = VNI, mtu: int = 1400, local: str | None = None, tuned: bool = False
) -> NetworkSpec:
    return NetworkSpec(
        network_id=NET,
        vni=vni,
        mtu=mtu,
        vxlan_port=4789,
        bridge_addresses=(GW,),
        local_vtep=ipaddress.ip_address(local) if local else None,
        tuned=tuned,
    )


def ep_spec(endpoint_id: str = EP, ip: str = "10.10.0.2", mtu: int = 1400) -> EndpointSpec:
    return EndpointSpec(
        network_id=NET, endpoint_id=endpoint_id, mac=mac.from_ip(ipaddress.ip_address(ip)), mtu=mtu
    )


def netns_of(host: NetlinkHost, network_id: str = NET) -> Path:
    return host.netns_dir / names.netns(network_id)


def vxlan_data(dev: Any) -> Any:
    return dev.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")


def udp_ports(ns: Path) -> set[int]:
    """Local ports of the UDP sockets bound in a namespace."""

    def read() -> set[int]:
        ports = set()
        for table in ("/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"):
            with open(table) as lines:
                next(lines)
                ports |= {int(line.split()[1].rsplit(":", 1)[1], 16) for line in lines}
        return ports

    return nsfs.run_in(ns, read)


def assert_complete(host: NetlinkHost, spec: NetworkSpec) -> None:
    """The whole layout of a network, as ensure_network promises it."""
    path = netns_of(host, spec.network_id)
    assert nsfs.is_netns(path)
    with ipr_in(path) as ns:
        lo = link(ns, "lo")
        assert lo["flags"] & IFF_UP
        br = link(ns, names.BRIDGE)
        assert br.get(("linkinfo", "kind")) == "bridge"
        assert br["flags"] & IFF_UP
        assert br.get("mtu") == spec.mtu
        assert addresses(ns, br["index"]) == set(spec.bridge_addresses)
        vx = link(ns, names.VXLAN)
        assert vx.get(("linkinfo", "kind")) == "vxlan"
        assert vx["flags"] & IFF_UP
        assert vx.get("mtu") == spec.mtu
        assert vx.get("master") == br["index"]
        data = vxlan_data(vx)
        assert data.get_attr("IFLA_VXLAN_ID") == spec.vni
        assert data.get_attr("IFLA_VXLAN_PORT") == spec.vxlan_port
        assert data.get_attr("IFLA_VXLAN_LEARNING") == 0
        assert data.get_attr("IFLA_VXLAN_PROXY") == 1
        assert data.get_attr("IFLA_VXLAN_L2MISS") == 0
        assert data.get_attr("IFLA_VXLAN_L3MISS") == 0
        if spec.local_vtep is not None:
            assert data.get_attr("IFLA_VXLAN_LOCAL") == str(spec.local_vtep)
        # Tuned: no outer UDP checksum (as Docker's overlay); otherwise the kernel's default.
        assert data.get_attr("IFLA_VXLAN_UDP_CSUM") == (0 if spec.tuned else 1)
        leftovers = {str(m.get("ifname")) for m in ns.link("dump")} - {
            "lo",
            names.BRIDGE,
            names.VXLAN,
        }
        assert not any(n.startswith(names.vxlan_staging(0)[:-1]) for n in leftovers)
    # The VXLAN socket listens on the host's underlay, not inside the network.
    assert spec.vxlan_port in udp_ports(host.ns)
    assert spec.vxlan_port not in udp_ports(path)
    assert not any(n.startswith("snvx") for n in host.our_links())


@pytest.fixture
def underlay_host(host: NetlinkHost) -> NetlinkHost:
    host.add_underlay(UNDERLAY, 1500, None)
    return host


# -- layout ---------------------------------------------------------------------


def test_network_layout(underlay_host: NetlinkHost) -> None:
    spec = net_spec(local=str(UNDERLAY.ip))
    underlay_host.kernel.ensure_network(spec)
    assert_complete(underlay_host, spec)
    assert [p.name for p in underlay_host.netns_dir.iterdir()] == [names.netns(NET)]


def bridge_nf(path: Path) -> dict[str, str]:
    """The namespace's bridge-nf-call sysctls ({} without br_netfilter)."""

    def read() -> dict[str, str]:
        found = {}
        for sysctl in Path("/proc/sys/net/bridge").glob("bridge-nf-call-*"):
            found[sysctl.name] = sysctl.read_text().strip()
        return found

    return dict(nsfs.run_in(path, read))


def test_tuned_network_has_no_bridge_netfilter_and_no_outer_checksum(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec())
    assert_complete(host, net_spec())
    plain = bridge_nf(netns_of(host))
    assert set(plain.values()) <= {"1"}  # the kernel's per-namespace default is left alone
    host.kernel.ensure_network(net_spec(tuned=True))
    assert_complete(host, net_spec(tuned=True))  # the device was made again without it
    assert set(bridge_nf(netns_of(host)).values()) <= {"0"}
    assert bridge_nf(netns_of(host)).keys() == plain.keys()
    host.kernel.ensure_network(net_spec())  # back: the checksum returns
    assert_complete(host, net_spec())


def test_endpoint_layout(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec())
    links = host.kernel.ensure_endpoint(ep_spec())
    with ipr_in(host.ns) as ipr:
        outer = link(ipr, links.host_side)
        assert outer.get(("linkinfo", "kind")) == "veth"
        assert outer.get("address") == mac.from_ip(ipaddress.ip_address("10.10.0.2"))
        assert outer.get("mtu") == 1400
        assert not outer["flags"] & IFF_UP  # Docker configures it in the container
        assert link(ipr, links.bridge_side) is None
    with ipr_in(netns_of(host)) as ns:
        inner = link(ns, links.bridge_side)
        assert inner.get(("linkinfo", "kind")) == "veth"
        assert inner.get("master") == link(ns, names.BRIDGE)["index"]
        assert inner["flags"] & IFF_UP
        assert inner.get("mtu") == 1400


def test_peer_entries_are_static(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec())
    peer = Peer(
        ipaddress.ip_address("10.10.0.9"), "02:42:0a:0a:00:09", ipaddress.ip_address("192.0.2.9")
    )
    host.kernel.ensure_peer(NET, peer)
    with ipr_in(netns_of(host)) as ns:
        vx = link(ns, names.VXLAN)["index"]
        fdb = [e for e in ns.fdb("dump", ifindex=vx) if e.get("dst")]
        assert [(e.get("lladdr"), e.get("dst")) for e in fdb] == [(peer.mac, "192.0.2.9")]
        assert fdb[0].get("state") & NUD_PERMANENT
        assert fdb[0].get("flags") & NTF_SELF
        neigh = [e for e in ns.neigh("dump", ifindex=vx) if e.get("family") == 2]
        assert [(e.get("dst"), e.get("lladdr")) for e in neigh] == [("10.10.0.9", peer.mac)]
        assert neigh[0].get("state") == NUD_PERMANENT


def test_host_networks_exactly(host: NetlinkHost) -> None:
    host.add_underlay(UNDERLAY, 1450, "198.51.100.1")
    assert set(host.kernel.host_networks()) == {
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("198.51.100.0/24"),
        ipaddress.ip_network("203.0.113.0/24"),
    }


def test_underlay_mtu_without_default_route_or_address_is_1500(host: NetlinkHost) -> None:
    assert host.kernel.underlay_mtu(None) == 1500
    assert host.kernel.underlay_mtu(ipaddress.ip_address("192.0.2.77")) == 1500


def test_default_host_namespace_is_the_callers(host: NetlinkHost) -> None:
    kernel = NetlinkKernel(netns_dir=host.netns_dir)  # no host_netns: the calling thread's

    def work() -> None:
        kernel.ensure_network(net_spec())
        kernel.ensure_endpoint(ep_spec())

    nsfs.run_in(host.ns, work)
    assert host.our_links() == {names.veth_host(EP)}
    assert_complete(host, net_spec())


def test_state_outlives_the_kernel_object(host: NetlinkHost) -> None:
    """A plugin restart: a new NetlinkKernel finds what the old one made."""
    peer = Peer(
        ipaddress.ip_address("10.10.0.9"), "02:42:0a:0a:00:09", ipaddress.ip_address("192.0.2.9")
    )
    host.kernel.ensure_network(net_spec())
    host.kernel.ensure_endpoint(ep_spec())
    host.kernel.ensure_peer(NET, peer)
    again = NetlinkKernel(netns_dir=host.netns_dir, host_netns=host.ns)
    assert again.network_ids() == {names.short(NET)}
    assert again.endpoint_ids(NET) == {names.short(EP)}
    assert again.peers(NET) == {peer}
    again.ensure_network(net_spec())
    assert again.peers(NET) == {peer}


# -- half-made state and drift ----------------------------------------------------


def test_namespace_file_without_mount_is_completed(host: NetlinkHost) -> None:
    path = netns_of(host)
    path.parent.mkdir(parents=True)
    path.touch()  # a crash between creating the file and mounting the namespace
    assert host.kernel.network_ids() == {names.short(NET)}
    host.kernel.ensure_network(net_spec())
    assert_complete(host, net_spec())


def test_half_made_namespace_file_is_removed(host: NetlinkHost) -> None:
    path = netns_of(host)
    path.parent.mkdir(parents=True)
    path.touch()
    host.kernel.remove_network(NET)
    assert not path.exists()
    assert host.kernel.network_ids() == set()


def test_network_without_vxlan_is_completed(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec())
    with ipr_in(netns_of(host)) as ns:
        bridge = link(ns, names.BRIDGE)["index"]
        ns.link("del", index=link(ns, names.VXLAN)["index"])
    host.kernel.ensure_network(net_spec())
    assert_complete(host, net_spec())
    with ipr_in(netns_of(host)) as ns:
        assert link(ns, names.BRIDGE)["index"] == bridge  # completed, not rebuilt


def test_staging_device_left_in_the_host_is_replaced(host: NetlinkHost) -> None:
    # A crash between creating the VXLAN device and moving it.
    with ipr_in(host.ns) as ipr:
        staging = names.vxlan_staging(VNI)
        ipr.link("add", ifname=staging, kind="vxlan", vxlan_id=VNI, vxlan_port=4789)
    host.kernel.ensure_network(net_spec())
    assert_complete(host, net_spec())


def test_staging_device_moved_but_not_renamed_is_replaced(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec())
    with ipr_in(netns_of(host)) as ns:
        index = link(ns, names.VXLAN)["index"]
        ns.link("set", index=index, state="down")
        ns.link("set", index=index, ifname=names.vxlan_staging(VNI))
    host.kernel.ensure_network(net_spec())
    assert_complete(host, net_spec())


def test_vxlan_with_another_vni_is_replaced(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec(vni=100))
    host.kernel.ensure_network(net_spec(vni=200))
    assert_complete(host, net_spec(vni=200))
    # The old VNI is really gone: another network can take it.
    other = NetworkSpec(network_id="e5" * 32, vni=100, mtu=1400, vxlan_port=4789)
    host.kernel.ensure_network(other)
    assert_complete(host, other)


def test_drift_is_corrected(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec())
    with ipr_in(netns_of(host)) as ns:
        br = link(ns, names.BRIDGE)["index"]
        vx = link(ns, names.VXLAN)["index"]
        ns.link("set", index=vx, state="down")
        ns.link("set", index=vx, master=0)
        ns.link("set", index=vx, mtu=9000)
        ns.link("set", index=br, mtu=9000)
        ns.link("set", index=br, state="down")
        ns.addr("del", index=br, address=str(GW.ip), prefixlen=24)
        ns.addr("add", index=br, address="10.99.0.1", prefixlen=16)
        ns.link("set", index=link(ns, "lo")["index"], state="down")
    host.kernel.ensure_network(net_spec())
    assert_complete(host, net_spec())


def test_stale_host_side_veth_is_replaced(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec())
    with ipr_in(host.ns) as ipr:
        ipr.link("add", ifname=names.veth_host(EP), kind="veth", peer="strayveth")
    links = host.kernel.ensure_endpoint(ep_spec())
    assert host.our_links() == {links.host_side}
    assert host.kernel.endpoint_ids(NET) == {names.short(EP)}
    with ipr_in(host.ns) as ipr:
        assert link(ipr, "strayveth") is None


def test_orphans_include_staging_devices_but_not_foreign_links(host: NetlinkHost) -> None:
    with ipr_in(host.ns) as ipr:
        ipr.link("add", ifname=names.vxlan_staging(77), kind="vxlan", vxlan_id=77, vxlan_port=4789)
        ipr.link("add", ifname="snapshot0", kind="veth", peer="eth9")  # "sn" but not ours
    assert host.kernel.remove_orphan_links(set()) == [names.vxlan_staging(77)]
    assert host.our_links() == {"snapshot0"}


# -- failures ----------------------------------------------------------------------


class FailOnMaster:
    """A netlink handle that refuses to enslave anything: a failure in the middle of a step."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __enter__(self) -> FailOnMaster:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def link(self, command: str, **kwarg: Any) -> Any:
        if command in ("add", "set") and kwarg.get("master"):
            raise NetlinkError(errno.EPERM)
        return self.inner.link(command, **kwarg)


@pytest.fixture
def failing_master(monkeypatch: pytest.MonkeyPatch) -> None:
    real = netlink_handles.ipr_on
    monkeypatch.setattr(netlink_handles, "ipr_on", lambda sock: FailOnMaster(real(sock)))


def refuse_veth(*_args: Any, **_kwargs: Any) -> None:
    raise NetlinkError(errno.EPERM)


def test_failed_endpoint_leaves_no_veth(host: NetlinkHost, monkeypatch: pytest.MonkeyPatch) -> None:
    host.kernel.ensure_network(net_spec())
    # Join's pair is one onelink request, not an IPRoute call.
    monkeypatch.setattr(onelink, "add_veth", refuse_veth)
    with pytest.raises(KernelError, match=rf"endpoint {names.short(EP)}.*not permitted"):
        host.kernel.ensure_endpoint(ep_spec())
    monkeypatch.undo()
    assert host.our_links() == set()
    assert host.kernel.endpoint_ids(NET) == set()


def test_veth_the_kernel_cannot_enslave_is_not_left_behind(host: NetlinkHost) -> None:
    """The pair, its master and its state are one request: the kernel undoes it whole."""
    host.kernel.ensure_network(net_spec())
    host.kernel._bridges[names.short(NET)] = 1  # lo: not a device anything can be enslaved to
    with pytest.raises(KernelError, match=rf"endpoint {names.short(EP)}"):
        host.kernel.ensure_endpoint(ep_spec())
    assert host.our_links() == set()
    assert host.kernel.endpoint_ids(NET) == set()


def test_failed_new_network_leaves_nothing(host: NetlinkHost, failing_master: None) -> None:
    with pytest.raises(KernelError, match=rf"network {names.short(NET)}.*not permitted"):
        host.kernel.ensure_network(net_spec())
    assert host.kernel.network_ids() == set()
    assert list(host.netns_dir.iterdir()) == []
    assert mounts_under(host.netns_dir) == []
    assert host.our_links() == set()


def test_kernel_refusal_names_the_object_and_the_reason(host: NetlinkHost) -> None:
    with pytest.raises(KernelError, match=r"bridge br0.*Invalid argument"):
        host.kernel.ensure_network(net_spec(mtu=70000))
    assert host.kernel.network_ids() == set()


# -- resources and threads ----------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_or_thread_leak(host: NetlinkHost) -> None:
    peer = Peer(
        ipaddress.ip_address("10.10.0.9"), "02:42:0a:0a:00:09", ipaddress.ip_address("192.0.2.9")
    )

    def cycle() -> None:
        host.kernel.ensure_network(net_spec())
        host.kernel.ensure_endpoint(ep_spec())
        host.kernel.ensure_peer(NET, peer)
        assert host.kernel.peers(NET) == {peer}
        host.kernel.remove_peer(NET, peer)
        host.kernel.remove_endpoint(NET, EP)
        host.kernel.host_networks()
        host.kernel.remove_network(NET)
        with pytest.raises(KernelError):
            host.kernel.ensure_endpoint(ep_spec())

    cycle()  # warm up lazily created objects
    fds, threads = open_fds(), threading.active_count()
    for _ in range(20):
        cycle()
    assert (open_fds(), threading.active_count()) == (fds, threads)


def test_concurrent_calls(host: NetlinkHost) -> None:
    host.kernel.ensure_network(net_spec())
    endpoints = [f"{i:02x}" * 32 for i in range(8)]
    errors: list[BaseException] = []

    def work(eid: str, n: int) -> None:
        try:
            host.kernel.ensure_endpoint(ep_spec(eid, ip=f"10.10.0.{10 + n}"))
            host.kernel.ensure_network(net_spec())
            host.kernel.ensure_peer(
                NET,
                Peer(
                    ipaddress.ip_address(f"10.10.1.{n}"),
                    mac.from_ip(ipaddress.ip_address(f"10.10.1.{n}")),
                    ipaddress.ip_address("192.0.2.9"),
                ),
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e, n)) for n, e in enumerate(endpoints)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert host.kernel.endpoint_ids(NET) == {names.short(e) for e in endpoints}
    assert len(host.kernel.peers(NET)) == len(endpoints)


# -- data path ---------------------------------------------------------------------


def firewall(host_ns: Path) -> None:
    """What Docker does to a host: bridged traffic through iptables, FORWARD dropped."""
    write_sysctl(host_ns, "net.bridge.bridge-nf-call-iptables", "1")
    nsexec(host_ns, "iptables", "-P", "FORWARD", "DROP")


@pytest.mark.parametrize("strict_host", [False, True], ids=["open", "forward-drop"])
def test_two_endpoints_on_one_host_talk(underlay_host: NetlinkHost, strict_host: bool) -> None:
    host = underlay_host
    if strict_host:
        firewall(host.ns)
    host.kernel.ensure_network(net_spec())
    host.kernel.ensure_endpoint(ep_spec(EP, ip="10.10.0.2"))
    host.kernel.ensure_endpoint(ep_spec(EP2, ip="10.10.0.3"))
    one = host.join(EP, ipaddress.ip_interface("10.10.0.2/24"))
    two = host.join(EP2, ipaddress.ip_interface("10.10.0.3/24"))
    assert udp_echo(one, two, "10.10.0.3")
    assert udp_echo(two, one, "10.10.0.2")
    assert udp_echo(one, netns_of(host), str(GW.ip))  # the gateway on the bridge answers
    # Control: with the bridge side down nothing passes; re-ensuring the joined
    # endpoint brings it back.
    with ipr_in(netns_of(host)) as ns:
        ns.link("set", index=link(ns, names.veth_bridge(EP2))["index"], state="down")
    assert not udp_echo(one, two, "10.10.0.3", tries=1, timeout=0.5)
    host.kernel.ensure_endpoint(ep_spec(EP2, ip="10.10.0.3"))
    assert udp_echo(one, two, "10.10.0.3")


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[NetlinkHost, NetlinkHost]]:
    """Two hosts joined by a veth underlay: 192.0.2.1 and 192.0.2.2."""
    require_root()
    a = NetlinkHost(tmp_path / "a")
    try:
        b = NetlinkHost(tmp_path / "b")
    except BaseException:
        a.close()
        raise
    try:
        fd = nsfs.open_fd(b.ns)
        try:
            with ipr_in(a.ns) as ipr:
                ipr.link("add", ifname="ul0", kind="veth", peer={"ifname": "ul0", "net_ns_fd": fd})
        finally:
            os.close(fd)
        for h, address in ((a, "192.0.2.1"), (b, "192.0.2.2")):
            with ipr_in(h.ns) as ipr:
                index = link(ipr, "ul0")["index"]
                ipr.addr("add", index=index, address=address, prefixlen=24)
                ipr.link("set", index=index, state="up")
            firewall(h.ns)
        yield a, b
    finally:
        try:
            a.close()
        finally:
            b.close()


def test_two_hosts_talk_across_vxlan(two_hosts: tuple[NetlinkHost, NetlinkHost]) -> None:
    a, b = two_hosts
    sides = ((a, "192.0.2.1", EP, "10.10.0.2"), (b, "192.0.2.2", EP2, "10.10.0.3"))
    containers = []
    for h, vtep, eid, ip in sides:
        assert h.kernel.underlay_mtu(ipaddress.ip_address(vtep)) == 1500
        # One side tuned (no outer UDP checksum), one not: they interoperate.
        h.kernel.ensure_network(net_spec(mtu=1450, local=vtep, tuned=h is a))
        h.kernel.ensure_endpoint(ep_spec(eid, ip=ip, mtu=1450))
        containers.append(h.join(eid, ipaddress.ip_interface(f"{ip}/24")))
    in_a, in_b = containers
    # No peers yet: ARP is suppressed and nothing is flooded, so nothing gets through.
    assert not udp_echo(in_a, in_b, "10.10.0.3", tries=1, timeout=0.5)
    for h, (_, vtep, _, ip) in ((a, sides[1]), (b, sides[0])):
        remote = ipaddress.ip_address(ip)
        h.kernel.ensure_peer(NET, Peer(remote, mac.from_ip(remote), ipaddress.ip_address(vtep)))
    assert udp_echo(in_a, in_b, "10.10.0.3")
    assert udp_echo(in_b, in_a, "10.10.0.2")
    # A full-size datagram: 1450 inside plus 50 of VXLAN is exactly the underlay's 1500.
    assert udp_echo(in_a, in_b, "10.10.0.3", size=1450 - 28)


# -- retired veths -------------------------------------------------------------------


def test_retire_unplugs_at_once_and_one_request_deletes_the_batch(
    host: NetlinkHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.kernel.ensure_network(net_spec())
    endpoints = [f"{i:02x}" * 32 for i in range(6)]
    for n, eid in enumerate(endpoints):
        host.kernel.ensure_endpoint(ep_spec(eid, ip=f"10.10.0.{10 + n}"))
    scheduled: list[str] = []
    monkeypatch.setattr(host.kernel._reaper, "schedule", scheduled.append)
    for eid in endpoints:
        host.kernel.retire_endpoint(NET, eid)
    assert scheduled == [NET] * len(endpoints)
    with ipr_in(host.netns_dir / names.netns(NET)) as ipr:
        for eid in endpoints:
            veth = link(ipr, names.veth_bridge(eid))
            assert veth is not None
            assert veth.get("group") == netlink_module.RETIRED_GROUP
            assert not veth["flags"] & IFF_UP
            assert not veth.get("master")
    # The plugin stopped before deleting them; the next run finds and deletes them,
    # every one in the same request.
    again = NetlinkKernel(netns_dir=host.netns_dir, host_netns=host.ns)
    reaped: list[str] = []
    reap = again._reaper._reap
    monkeypatch.setattr(again._reaper, "_reap", lambda nid: (reaped.append(nid), reap(nid)))
    assert again.endpoint_ids(NET) == set()
    again.settle()
    assert reaped == [NET]
    assert host.our_links() == set()
    with ipr_in(host.netns_dir / names.netns(NET)) as ipr:
        assert all(link(ipr, names.veth_bridge(e)) is None for e in endpoints)
