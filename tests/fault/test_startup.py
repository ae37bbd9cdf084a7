"""Start-up with a network that cannot be rebuilt, crash leftovers, and the lock tables,
on the in-memory kernel (test_kernel_faults.py does the same on the real one)."""

from __future__ import annotations

import threading

from core.layout import StoreLayout
from driver import names
from driver.kernel.fake import FakeKernel
from driver.kernel.port import KernelError, NetworkSpec
from driver.keylocks import KeyedLocks
from driver.vni import VniTable
from plugin.app import STORE_ROOT
from plugin.store.memory import MemoryKV
from tests.unit.conftest import make_plugin

LAYOUT = StoreLayout(STORE_ROOT)
NETS = ["a" * 25, "b" * 25, "c" * 25]


class RefusesOne(FakeKernel):
    """A kernel on which one network cannot be made (its VNI is taken, say)."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused

    def ensure_network(self, spec: NetworkSpec) -> None:
        if spec.network_id == self.refused:
            raise KernelError(f"VNI {spec.vni} on port 4789 is already used")
        super().ensure_network(spec)


def test_one_broken_network_is_marked_and_retried_and_the_others_serve() -> None:
    store = MemoryKV()
    first = make_plugin({"SCOPE": "local"}, store=store)
    for i, net in enumerate(NETS):
        body = {"NetworkID": net, "Options": {}, "IPv4Data": [{"Pool": f"10.6{i}.0.0/24"}]}
        first.ok("/NetworkDriver.CreateNetwork", body)

    kernel = RefusesOne(NETS[1])
    plugin = make_plugin({"SCOPE": "local"}, store=store, kernel=kernel)  # must not raise
    assert set(kernel.networks) == {names.short(NETS[0]), names.short(NETS[2])}
    broken = {n["NetworkID"]: n["Broken"] for n in plugin.ok("/Swarmnet.Status")["Networks"]}
    assert broken[NETS[0]] == broken[NETS[2]] == ""
    assert "already used" in broken[NETS[1]]

    service = plugin.client.application.extensions["swarmnet"].network
    assert service.retry_broken() == []  # still refused
    kernel.refused = ""
    assert service.retry_broken() == [f"network {names.short(NETS[1])}: rebuilt"]
    assert service.broken.view() == {}
    assert len(kernel.networks) == 3


def test_a_vni_held_by_a_network_with_no_record_is_released_at_start() -> None:
    store = MemoryKV()
    # A crash between allocating network X's VNI and writing its record.
    store.put(LAYOUT.vni, VniTable({"x" * 25: 256}, 256).dump())
    make_plugin({"SCOPE": "local"}, store=store)
    assert VniTable.load(store.get(LAYOUT.vni)).by_network == {}


def test_delete_network_releases_a_vni_even_without_a_record() -> None:
    store = MemoryKV()
    plugin = make_plugin({"SCOPE": "local"}, store=store)
    store.put(LAYOUT.vni, VniTable({"x" * 25: 256}, 256).dump())
    plugin.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": "x" * 25})
    assert VniTable.load(store.get(LAYOUT.vni)).by_network == {}


def test_the_lock_tables_hold_only_networks_in_use() -> None:
    plugin = make_plugin({"SCOPE": "local"})
    service = plugin.client.application.extensions["swarmnet"].network
    for i in range(50):
        net = f"{i:025d}"
        plugin.ok("/NetworkDriver.CreateNetwork", {"NetworkID": net, "Options": {}})
        plugin.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": net})
    assert len(service._locks) == 0


def test_keyed_locks_exclude_and_prune_under_contention() -> None:
    locks = KeyedLocks()
    inside = {"now": 0, "max": 0}
    guard = threading.Lock()

    def work() -> None:
        for _ in range(200):
            with locks.hold("n"):
                with guard:
                    inside["now"] += 1
                    inside["max"] = max(inside["max"], inside["now"])
                with guard:
                    inside["now"] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert inside["max"] == 1
    assert len(locks) == 0
