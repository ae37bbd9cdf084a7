"""The call sequences of issue 3, as dockerd 20.10 sends them in a swarm.

Manager: RequestPool(global, no Pool), RequestAddress(gateway, serial), then
RequestAddress(serial) for every task IP and VIP. Every node, the manager too:
RequestPool(local, that Pool), RequestAddress(that gateway), the aux addresses,
then RequestAddress(that address) for each endpoint. A new leader replays its
allocations with explicit values; dockerd replays local-scope networks after a
restart when GetCapabilities says RequiresRequestReplay.
"""

from __future__ import annotations

from collections.abc import Sequence

from ipam.service import IpamService
from tests.unit.ipam.fakes import CasKV
from tests.unit.ipam.helpers import (
    GATEWAY,
    GLOBAL,
    LOCAL,
    SERIAL,
    SWARM_GATEWAY,
    addr,
    address,
    pool,
    service,
)


def bare(iface: str) -> str:
    return iface.split("/")[0]


def manager_allocates(svc: IpamService, tasks: int) -> tuple[str, str, list[str]]:
    pid = pool(svc, options=SERIAL)  # swarmkit puts serial into the IPAM driver options
    gw = address(svc, pid, options=SWARM_GATEWAY)
    return pid, gw, [address(svc, pid, options=SERIAL) for _ in range(tasks)]


def node_replays(
    svc: IpamService, global_pid: str, gw: str, endpoints: list[str], aux: Sequence[str] = ()
) -> list[str]:
    subnet = global_pid.split("/", 1)[1]
    local_pid = pool(svc, subnet, space=LOCAL, options=SERIAL)
    assert local_pid == f"{LOCAL}/{subnet}"
    assert address(svc, local_pid, bare(gw), GATEWAY) == gw
    for a in aux:
        address(svc, local_pid, a)
    return [address(svc, local_pid, bare(e)) for e in endpoints]


def test_manager_serves_both_spaces_from_one_store() -> None:
    store = CasKV()  # the lead's one-host wiring: local and shared are the same store
    svc = service("10.10.0.0/22", local=store, shared=store)
    pid, gw, tasks = manager_allocates(svc, 3)
    assert (pid, gw, tasks) == (
        f"{GLOBAL}/10.10.0.0/24",
        "10.10.0.1/24",
        ["10.10.0.2/24", "10.10.0.3/24", "10.10.0.4/24"],
    )
    assert node_replays(svc, pid, gw, tasks) == tasks
    # A Docker retry of the whole node-side sequence also succeeds.
    assert node_replays(svc, pid, gw, tasks) == tasks
    # The global space goes on where it was.
    assert address(svc, pid, options=SERIAL) == "10.10.0.5/24"
    assert pool(svc) == f"{GLOBAL}/10.10.1.0/24"


def test_worker_local_space_accepts_what_the_manager_chose_even_over_aux_addresses() -> None:
    manager = service("10.10.0.0/22")
    pid, gw, tasks = manager_allocates(manager, 3)
    worker = service("10.10.0.0/22", local=CasKV(), shared=CasKV())
    # The swarm allocator knows nothing of --aux-address, so a task may get one;
    # the node must still be able to attach it.
    assert node_replays(worker, pid, gw, tasks, aux=[bare(tasks[1])]) == tasks


def test_new_leader_replays_into_the_shared_store() -> None:
    shared = CasKV()
    old = service("10.10.0.0/22", local=CasKV(), shared=shared)
    pid, gw, tasks = manager_allocates(old, 3)
    old_free = address(old, pid, options=SERIAL)
    old.release_address(pid, addr(bare(old_free)))
    before = shared.snapshot()

    new = service("10.10.0.0/22", local=CasKV(), shared=shared)
    subnet = pid.split("/", 1)[1]
    assert pool(new, subnet, options=SERIAL) == pid
    assert address(new, pid, bare(gw), SWARM_GATEWAY) == gw
    assert [address(new, pid, bare(t), SERIAL) for t in tasks] == tasks
    assert shared.snapshot() == before  # a replay changes nothing
    # New allocations neither collide nor restart from the top.
    assert address(new, pid, options=SERIAL) == "10.10.0.6/24"
    assert pool(new) == f"{GLOBAL}/10.10.1.0/24"


def test_new_leader_replays_into_an_empty_store() -> None:
    # Before the shared store exists each manager has its own: the replay rebuilds it.
    old = service("10.10.0.0/22")
    pid, gw, tasks = manager_allocates(old, 2)
    new = service("10.10.0.0/22")
    subnet = pid.split("/", 1)[1]
    assert pool(new, subnet, options=SERIAL) == pid
    assert address(new, pid, bare(gw), SWARM_GATEWAY) == gw
    assert [address(new, pid, bare(t), SERIAL) for t in tasks] == tasks
    assert address(new, pid, options=SERIAL) == "10.10.0.4/24"
    assert address(new, pid, options=GATEWAY) == gw
    # The replayed explicit pool is skipped by the dynamic search.
    assert pool(new) == f"{GLOBAL}/10.10.1.0/24"


def test_dockerd_restart_replay_of_a_local_network_changes_nothing() -> None:
    store = CasKV()
    svc = service("10.10.0.0/22", local=store, shared=CasKV())
    pid = pool(svc, space=LOCAL)
    gw = address(svc, pid, options=GATEWAY)
    eps = [address(svc, pid) for _ in range(3)]
    before = store.snapshot()

    restarted = service("10.10.0.0/22", local=store, shared=CasKV())
    assert restarted.capabilities() == (True, True)
    # libnetwork's reservePools: the pool with PreferredPool set to what it got,
    # the gateway, then each endpoint's address.
    subnet = pid.split("/", 1)[1]
    assert pool(restarted, subnet, space=LOCAL) == pid
    assert address(restarted, pid, bare(gw), GATEWAY) == gw
    assert [address(restarted, pid, bare(e)) for e in eps] == eps
    assert store.snapshot() == before


def test_replay_into_a_lost_local_store_restores_it() -> None:
    svc = service("10.10.0.0/22", local=CasKV(), shared=CasKV())
    pid = pool(svc, space=LOCAL)
    gw = address(svc, pid, options=GATEWAY)
    eps = [address(svc, pid) for _ in range(2)]

    fresh = service("10.10.0.0/22", local=CasKV(), shared=CasKV())
    subnet = pid.split("/", 1)[1]
    pool(fresh, subnet, space=LOCAL)
    address(fresh, pid, bare(gw), GATEWAY)
    for e in eps:
        address(fresh, pid, bare(e))
    # The next container does not get an address a running one holds.
    assert address(fresh, pid) == "10.10.0.4/24"
    assert pool(fresh, space=LOCAL) == f"{LOCAL}/10.10.1.0/24"
