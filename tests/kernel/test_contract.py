"""The Kernel port's contract, checked against FakeKernel and NetlinkKernel alike."""

from __future__ import annotations

import ipaddress

import pytest

from driver import names
from driver.kernel.port import EndpointSpec, KernelError, NetworkSpec, Peer

from .lab import UNDERLAY_ADDR, UNDERLAY_MTU, Harness

pytestmark = pytest.mark.kernel

NET = "a1" * 32
NET2 = "b2" * 32
EP = "c3" * 32
EP2 = "d4" * 32
GW = ipaddress.ip_interface("10.10.0.1/24")


def net_spec(
    network_id: str = NET,
    vni: int = 4200,
    mtu: int = 1400,
    addrs: tuple[str, ...] = ("10.10.0.1/24",),
) -> NetworkSpec:
    return NetworkSpec(
        network_id=network_id,
        vni=vni,
        mtu=mtu,
        vxlan_port=4789,
        bridge_addresses=tuple(ipaddress.ip_interface(a) for a in addrs),
    )


def ep_spec(endpoint_id: str = EP, mac: str = "02:42:0a:0a:00:02", mtu: int = 1400) -> EndpointSpec:
    return EndpointSpec(network_id=NET, endpoint_id=endpoint_id, mac=mac, mtu=mtu)


def peer(ip: str = "10.10.0.9", mac: str = "02:42:0a:0a:00:09", vtep: str = "192.0.2.9") -> Peer:
    return Peer(ip=ipaddress.ip_address(ip), mac=mac, vtep=ipaddress.ip_address(vtep))


# -- host facts ----------------------------------------------------------------


def test_underlay_mtu_is_that_of_the_interface_or_the_default_route(harness: Harness) -> None:
    assert harness.kernel.underlay_mtu(UNDERLAY_ADDR.ip) == UNDERLAY_MTU
    assert harness.kernel.underlay_mtu(None) == UNDERLAY_MTU


def test_host_networks_lists_routes_and_on_link_networks_but_not_default(harness: Harness) -> None:
    found = harness.kernel.host_networks()
    assert harness.expected_host_networks() <= set(found)
    assert all(n.prefixlen > 0 for n in found)
    assert not any(n.version == 6 and n.is_link_local for n in found)


# -- networks -------------------------------------------------------------------


def test_network_ensure_twice(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    harness.kernel.ensure_network(net_spec())
    assert harness.kernel.network_ids() == {names.short(NET)}
    assert harness.bridge(NET) == (1400, {GW})


def test_reensure_corrects_mtu_and_addresses(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec(mtu=1400, addrs=("10.10.0.1/24",)))
    harness.kernel.ensure_network(net_spec(mtu=1350, addrs=("10.10.0.254/24", "fd00:10::1/64")))
    assert harness.bridge(NET) == (
        1350,
        {ipaddress.ip_interface("10.10.0.254/24"), ipaddress.ip_interface("fd00:10::1/64")},
    )


def test_overlapping_subnets_on_two_networks(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec(NET, vni=4200))
    harness.kernel.ensure_network(net_spec(NET2, vni=4201))
    assert harness.kernel.network_ids() == {names.short(NET), names.short(NET2)}
    assert harness.bridge(NET) == harness.bridge(NET2) == (1400, {GW})
    assert GW.network not in harness.kernel.host_networks()


def test_a_vni_in_use_by_another_network_is_refused_and_leaves_nothing(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec(NET, vni=4200))
    with pytest.raises(KernelError, match="4200"):
        harness.kernel.ensure_network(net_spec(NET2, vni=4200))
    assert harness.kernel.network_ids() == {names.short(NET)}
    assert harness.host_links() == set()


def test_vni_change_keeps_the_network_and_its_peers(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec(vni=4200))
    harness.kernel.ensure_peer(NET, peer())
    harness.kernel.ensure_network(net_spec(vni=4300))
    assert harness.kernel.peers(NET) == {peer()}


def test_remove_network_twice_and_never_made(harness: Harness) -> None:
    harness.kernel.remove_network(NET2)  # never made
    harness.kernel.ensure_network(net_spec())
    harness.kernel.ensure_endpoint(ep_spec())
    harness.kernel.remove_network(NET)
    harness.kernel.remove_network(NET)
    assert harness.kernel.network_ids() == set()
    assert harness.kernel.endpoint_ids(NET) == set()
    assert harness.host_links() == set()
    # The VNI is free again at once.
    harness.kernel.ensure_network(net_spec(NET2))
    assert harness.kernel.network_ids() == {names.short(NET2)}


# -- endpoints ------------------------------------------------------------------


def test_endpoint_ensure_twice(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    first = harness.kernel.ensure_endpoint(ep_spec())
    second = harness.kernel.ensure_endpoint(ep_spec())
    assert first == second
    assert first.host_side == names.veth_host(EP)
    assert first.bridge_side == names.veth_bridge(EP)
    assert harness.kernel.endpoint_ids(NET) == {names.short(EP)}
    assert harness.host_links() == {first.host_side}
    assert harness.host_link(first.host_side) == (1400, "02:42:0a:0a:00:02")


def test_endpoint_reensure_corrects_the_host_side(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    links = harness.kernel.ensure_endpoint(ep_spec())
    harness.kernel.ensure_endpoint(ep_spec(mac="02:42:0a:0a:00:07", mtu=1300))
    assert harness.host_link(links.host_side) == (1300, "02:42:0a:0a:00:07")


def test_endpoint_on_a_missing_network_is_refused(harness: Harness) -> None:
    with pytest.raises(KernelError, match=names.short(NET)):
        harness.kernel.ensure_endpoint(ep_spec())
    assert harness.host_links() == set()


def test_joined_endpoint_is_left_alone(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    links = harness.kernel.ensure_endpoint(ep_spec())
    harness.join(NET, EP)
    assert harness.kernel.ensure_endpoint(ep_spec()) == links
    assert harness.host_links() == set()  # no second veth made in the host namespace
    assert harness.kernel.endpoint_ids(NET) == {names.short(EP)}


def test_remove_endpoint_twice_joined_and_never_made(harness: Harness) -> None:
    harness.kernel.remove_endpoint(NET, EP)  # no network, no endpoint
    harness.kernel.ensure_network(net_spec())
    harness.kernel.remove_endpoint(NET, EP)  # network, no endpoint
    harness.kernel.ensure_endpoint(ep_spec())
    harness.kernel.ensure_endpoint(ep_spec(EP2, mac="02:42:0a:0a:00:03"))
    harness.join(NET, EP2)
    harness.kernel.remove_endpoint(NET, EP)
    harness.kernel.remove_endpoint(NET, EP2)  # its host side is in a container
    harness.kernel.remove_endpoint(NET, EP)
    assert harness.kernel.endpoint_ids(NET) == set()
    assert harness.host_links() == set()


def test_retired_endpoint_is_gone_at_once_and_can_be_made_again(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    first = harness.kernel.ensure_endpoint(ep_spec())
    other = harness.kernel.ensure_endpoint(ep_spec(EP2, mac="02:42:0a:0a:00:03"))
    harness.kernel.retire_endpoint(NET, EP)
    assert harness.kernel.endpoint_ids(NET) == {names.short(EP2)}
    # Joined again before the deletion ran: a fresh, working pair, which the
    # deletion of the retired one must not take with it.
    again = harness.kernel.ensure_endpoint(ep_spec(mtu=1300))
    assert again == first
    harness.settle()
    assert harness.kernel.endpoint_ids(NET) == {names.short(EP), names.short(EP2)}
    assert harness.host_links() == {first.host_side, other.host_side}
    assert harness.host_link(first.host_side) == (1300, "02:42:0a:0a:00:02")


def test_retire_joined_twice_and_never_made(harness: Harness) -> None:
    harness.kernel.retire_endpoint(NET, EP)  # no network
    harness.kernel.ensure_network(net_spec())
    harness.kernel.retire_endpoint(NET, EP)  # no endpoint
    harness.kernel.ensure_endpoint(ep_spec())
    harness.join(NET, EP)
    harness.kernel.retire_endpoint(NET, EP)
    harness.kernel.retire_endpoint(NET, EP)
    harness.settle()
    assert harness.kernel.endpoint_ids(NET) == set()
    assert harness.host_links() == set()


def test_endpoint_ids_of_a_missing_network_is_empty(harness: Harness) -> None:
    assert harness.kernel.endpoint_ids(NET) == set()


def test_remove_orphan_links(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    keep = harness.kernel.ensure_endpoint(ep_spec())
    gone = harness.kernel.ensure_endpoint(ep_spec(EP2, mac="02:42:0a:0a:00:03"))
    assert harness.kernel.remove_orphan_links({EP}) == [gone.host_side]
    assert harness.kernel.remove_orphan_links({names.short(EP)}) == []
    assert harness.host_links() == {keep.host_side}
    assert harness.kernel.endpoint_ids(NET) == {names.short(EP)}
    assert harness.kernel.network_ids() == {names.short(NET)}


# -- peers ----------------------------------------------------------------------


def test_peer_ensure_twice(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    harness.kernel.ensure_peer(NET, peer())
    harness.kernel.ensure_peer(NET, peer())
    assert harness.kernel.peers(NET) == {peer()}


def test_peer_ensure_replaces_a_moved_mac_and_a_reused_ip(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    harness.kernel.ensure_peer(NET, peer())
    harness.kernel.ensure_peer(NET, peer(vtep="192.0.2.10"))  # the container moved host
    assert harness.kernel.peers(NET) == {peer(vtep="192.0.2.10")}
    harness.kernel.ensure_peer(NET, peer(mac="02:42:0a:0a:00:99", vtep="192.0.2.11"))
    assert harness.kernel.peers(NET) == {peer(mac="02:42:0a:0a:00:99", vtep="192.0.2.11")}


def test_dual_stack_peer_shares_one_mac(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    v4, v6 = peer(), peer(ip="fd00:10::9")
    harness.kernel.ensure_peer(NET, v4)
    harness.kernel.ensure_peer(NET, v6)
    assert harness.kernel.peers(NET) == {v4, v6}
    harness.kernel.remove_peer(NET, v4)
    assert harness.kernel.peers(NET) == {v6}
    harness.kernel.remove_peer(NET, v6)
    assert harness.kernel.peers(NET) == set()


def test_remove_peer_twice_and_never_made(harness: Harness) -> None:
    harness.kernel.remove_peer(NET, peer())  # no network
    harness.kernel.ensure_network(net_spec())
    harness.kernel.remove_peer(NET, peer())  # no peer
    harness.kernel.ensure_peer(NET, peer())
    harness.kernel.ensure_peer(NET, peer(ip="10.10.0.8", mac="02:42:0a:0a:00:08"))
    harness.kernel.remove_peer(NET, peer())
    harness.kernel.remove_peer(NET, peer())
    assert harness.kernel.peers(NET) == {peer(ip="10.10.0.8", mac="02:42:0a:0a:00:08")}


def test_remove_peer_leaves_an_entry_that_moved_on(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec())
    harness.kernel.ensure_peer(NET, peer(vtep="192.0.2.10"))
    harness.kernel.remove_peer(NET, peer(vtep="192.0.2.9"))  # stale news of the old VTEP
    assert harness.kernel.peers(NET) == {peer(vtep="192.0.2.10")}


def test_peers_are_per_network(harness: Harness) -> None:
    harness.kernel.ensure_network(net_spec(NET, vni=4200))
    harness.kernel.ensure_network(net_spec(NET2, vni=4201))
    harness.kernel.ensure_peer(NET, peer())
    assert harness.kernel.peers(NET) == {peer()}
    assert harness.kernel.peers(NET2) == set()


def test_peer_on_a_missing_network_is_refused(harness: Harness) -> None:
    with pytest.raises(KernelError, match=names.short(NET)):
        harness.kernel.ensure_peer(NET, peer())
    assert harness.kernel.peers(NET) == set()
