"""DeleteEndpoint after a Leave skips the work Leave already did (issue 6, plugin call latency);
without a Leave it still undoes Join: the veth goes and the record is withdrawn."""

from __future__ import annotations

from tests.unit.conftest import Plugin, RecordingControlPlane, make_plugin
from tests.unit.test_network_driver import EP, NET, create_body, endpoint_body, join_body

IDS = {"NetworkID": NET, "EndpointID": EP}


def make() -> tuple[Plugin, RecordingControlPlane]:
    control = RecordingControlPlane()
    # Publishing needs this node's data-path address.
    return make_plugin({"DATA_PATH_ADDR": "192.0.2.1"}, control=control), control


def endpoint_keys(p: Plugin) -> list[str]:
    return [k for k in p.store.list("/swarmnet/v1/local/") if "/endpoints/" in k]


def test_delete_after_leave_does_not_withdraw_again() -> None:
    p, control = make()
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    p.ok("/NetworkDriver.CreateEndpoint", endpoint_body())
    p.ok("/NetworkDriver.Join", join_body())
    assert EP in control.published
    p.ok("/NetworkDriver.Leave", IDS)
    assert control.withdrawals == [EP] and control.published == {}
    assert p.kernel.endpoint_ids(NET) == set() and p.kernel.host_links == set()

    p.ok("/NetworkDriver.DeleteEndpoint", IDS)
    assert control.withdrawals == [EP]  # nothing more to withdraw
    assert endpoint_keys(p) == []


def test_delete_without_leave_removes_the_veth_and_withdraws() -> None:
    p, control = make()
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    p.ok("/NetworkDriver.CreateEndpoint", endpoint_body())
    p.ok("/NetworkDriver.Join", join_body())
    assert p.kernel.host_links != set()

    p.ok("/NetworkDriver.DeleteEndpoint", IDS)
    assert control.withdrawals == [EP] and control.published == {}
    assert p.kernel.endpoint_ids(NET) == set() and p.kernel.host_links == set()
    assert endpoint_keys(p) == []
    # A retry (the record is gone) is still a full, harmless clean-up.
    p.ok("/NetworkDriver.DeleteEndpoint", IDS)
    assert control.withdrawals == [EP, EP]


def test_delete_of_an_endpoint_never_joined_needs_no_clean_up() -> None:
    p, control = make()
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    p.ok("/NetworkDriver.CreateEndpoint", endpoint_body())
    p.ok("/NetworkDriver.DeleteEndpoint", IDS)
    assert control.withdrawals == [] and endpoint_keys(p) == []
    assert p.kernel.host_links == set()
