"""Remote peers from snapshots: diffed against what was last programmed, and against
the kernel when the control plane asks for a recheck or the last programming failed
(issue 6: no FDB and neighbour dump per watch event)."""

from __future__ import annotations

import ipaddress

import pytest

from driver import mac
from driver.kernel.fake import FakeKernel
from driver.kernel.fake_ipsec import FakeIpsec
from driver.kernel.port import KernelError, Peer
from driver.peers import PeerRecord
from plugin.app import create_app
from plugin.settings import from_env
from plugin.store.memory import MemoryKV
from tests.unit.conftest import Plugin, RecordingControlPlane, make_plugin
from tests.unit.test_network_driver import NET, create_body

LOCAL_VTEP = "192.0.2.1"


class CountingKernel(FakeKernel):
    """Counts how often the driver reads the peers back from the kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def peers(self, network_id: str) -> set[Peer]:
        self.reads += 1
        return super().peers(network_id)


class CountingKV(MemoryKV):
    """Counts the store's reads."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, key: str) -> bytes | None:
        self.gets += 1
        return super().get(key)


def make(store: MemoryKV | None = None) -> tuple[Plugin, CountingKernel, RecordingControlPlane]:
    kernel, control = CountingKernel(), RecordingControlPlane()
    p = make_plugin({"DATA_PATH_ADDR": LOCAL_VTEP}, store=store, kernel=kernel, control=control)
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    return p, kernel, control


def record(n: int, vtep: str = "192.0.2.2") -> PeerRecord:
    ip = ipaddress.ip_address(f"10.0.0.{n}")
    return PeerRecord(NET, f"{n:02x}" * 32, ip, mac.from_ip(ip), ipaddress.ip_address(vtep))


def test_later_snapshots_change_the_kernel_without_reading_it() -> None:
    _, kernel, control = make()
    r1, r2, own = record(1), record(2), record(3, vtep=LOCAL_VTEP)
    control.deliver(NET, [r1])
    assert kernel.peers(NET) == {r1.peer()}
    reads = kernel.reads
    control.deliver(NET, [r1, own])  # an event about this node's own endpoint
    control.deliver(NET, [r1, own, r2])
    assert super(CountingKernel, kernel).peers(NET) == {r1.peer(), r2.peer()}
    control.deliver(NET, [r2, own])
    assert super(CountingKernel, kernel).peers(NET) == {r2.peer()}
    assert kernel.reads == reads  # the checks above bypass the count


def test_recheck_repairs_drift_that_the_last_programmed_set_cannot_see() -> None:
    _, kernel, control = make()
    r1 = record(1)
    stale = record(9).peer()
    control.deliver(NET, [r1])
    kernel.remove_peer(NET, r1.peer())  # drift: an operator, or another program
    kernel.ensure_peer(NET, stale)
    control.deliver(NET, [r1])
    assert kernel.peers(NET) == {stale}  # an ordinary event trusts what it programmed
    control.deliver(NET, [r1], recheck=True)
    assert kernel.peers(NET) == {r1.peer()}


def test_after_a_failed_programming_the_next_snapshot_reads_the_kernel() -> None:
    _, kernel, control = make()
    r1, r2 = record(1), record(2)
    control.deliver(NET, [r1])
    kernel.fail_next["ensure_peer"] = KernelError("injected")
    with pytest.raises(KernelError):
        control.deliver(NET, [r1, r2])
    reads = kernel.reads
    control.deliver(NET, [r1, r2])
    assert kernel.reads == reads + 1
    assert super(CountingKernel, kernel).peers(NET) == {r1.peer(), r2.peer()}


# -- changes between snapshots (issue 16: work in proportion to the change) ---------------


def test_changes_program_only_what_changed_without_reading_the_kernel() -> None:
    _, kernel, control = make()
    r1, r2, r3, own = record(1), record(2), record(3), record(4, vtep=LOCAL_VTEP)
    control.deliver(NET, [r1, r2])
    reads = kernel.reads
    assert control.deliver_changes(NET, {r3.endpoint_id: r3, r1.endpoint_id: None})
    assert control.deliver_changes(NET, {own.endpoint_id: own})  # our own: nothing to do
    assert super(CountingKernel, kernel).peers(NET) == {r2.peer(), r3.peer()}
    assert kernel.reads == reads


def test_changes_with_nothing_programmed_ask_for_a_snapshot() -> None:
    p, kernel, control = make()
    r1 = record(1)
    assert not control.deliver_changes(NET, {r1.endpoint_id: r1})  # before any snapshot
    assert kernel.peers(NET) == set()
    control.deliver(NET, [r1])
    p.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert not control.deliver_changes(NET, {r1.endpoint_id: None})  # the network is gone


def test_a_failed_change_leaves_nothing_to_apply_the_next_to() -> None:
    _, kernel, control = make()
    r1, r2, r3 = record(1), record(2), record(3)
    control.deliver(NET, [r1])
    kernel.fail_next["ensure_peer"] = KernelError("injected")
    with pytest.raises(KernelError):
        control.deliver_changes(NET, {r2.endpoint_id: r2})
    assert not control.deliver_changes(NET, {r3.endpoint_id: r3})
    control.deliver(NET, [r1, r2, r3])  # the snapshot that follows repairs it
    assert kernel.peers(NET) == {r1.peer(), r2.peer(), r3.peer()}


def test_a_delivery_of_changes_reads_nothing_from_the_store() -> None:
    # Decoding the network's record for every delivery was 7% of the control plane's
    # samples at 1,000 simulated nodes.
    store = CountingKV()
    _, kernel, control = make(store)
    r1, r2 = record(1), record(2)
    control.deliver(NET, [r1])
    gets = store.gets
    assert control.deliver_changes(NET, {r2.endpoint_id: r2})
    assert control.deliver_changes(NET, {r1.endpoint_id: None})
    assert kernel.peers(NET) == {r2.peer()}
    assert store.gets == gets


def make_encrypting() -> tuple[Plugin, FakeIpsec, RecordingControlPlane]:
    kernel, store, ipsec, control = FakeKernel(), MemoryKV(), FakeIpsec(), RecordingControlPlane()
    settings = from_env({"DATA_PATH_ADDR": LOCAL_VTEP})
    app = create_app(
        settings, kernel=kernel, local=store, shared=store, control=control, ipsec=ipsec
    )
    return Plugin(app.test_client(), kernel, store), ipsec, control


def sa_peers(ipsec: FakeIpsec) -> set[object]:
    return {sa.dst for sa in ipsec.sas.values()} - {ipaddress.ip_address(LOCAL_VTEP)}


def test_an_encrypted_network_takes_every_change_as_a_snapshot() -> None:
    # Fail closed: a peer's FDB entries come only after its SAs, which on_snapshot makes.
    p, ipsec, control = make_encrypting()
    p.ok("/NetworkDriver.CreateNetwork", create_body(encrypted=""))
    r1, r2 = record(1), record(2, vtep="192.0.2.3")
    assert not control.deliver_changes(NET, {r1.endpoint_id: r1})
    control.deliver(NET, [r1])
    assert not control.deliver_changes(NET, {r2.endpoint_id: r2})
    control.deliver(NET, [r1], recheck=True)
    assert not control.deliver_changes(NET, {r2.endpoint_id: r2})
    assert not control.deliver_changes(NET, {r1.endpoint_id: None})
    assert p.kernel.peers(NET) == {r1.peer()}
    control.deliver(NET, [r1, r2])
    assert p.kernel.peers(NET) == {r1.peer(), r2.peer()}
    assert sa_peers(ipsec) == {r1.vtep, r2.vtep}


def test_a_network_recreated_encrypted_does_not_take_changes_as_its_plain_self_did() -> None:
    p, ipsec, control = make_encrypting()
    r1, r2 = record(1), record(2, vtep="192.0.2.3")
    p.ok("/NetworkDriver.CreateNetwork", create_body())
    control.deliver(NET, [r1])
    assert control.deliver_changes(NET, {r2.endpoint_id: r2})
    p.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    p.ok("/NetworkDriver.CreateNetwork", create_body(encrypted=""))
    assert not control.deliver_changes(NET, {r1.endpoint_id: r1})
    assert p.kernel.peers(NET) == set()
    control.deliver(NET, [r1])
    assert not control.deliver_changes(NET, {r2.endpoint_id: r2})
    assert p.kernel.peers(NET) == {r1.peer()}
    assert sa_peers(ipsec) == {r1.vtep}
