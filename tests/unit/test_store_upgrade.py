"""A store written before the store layout and record versions still loads after an upgrade.

``fixtures/store/before-layout.json`` is what the plugin at commit 3cdcf3d wrote (through
its own code, with a fake kernel) for one standalone network with one joined endpoint
after DiscoverNew, plus the node ID that ``create_app`` keeps with a real kernel. Its
driver records have no ``"v"`` and this host's VTEP sits under the old key ``local/node``.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from core.layout import StoreLayout
from driver.config import DriverConfig
from driver.kernel.fake import FakeKernel
from driver.local_state import LocalState
from driver.records import (
    CorruptRecord,
    EndpointRecord,
    NetworkRecord,
    VtepRecord,
    decode,
    encode,
)
from plugin.app import STORE_ROOT
from plugin.store.memory import MemoryKV
from tests.unit.conftest import make_plugin

LAYOUT = StoreLayout(STORE_ROOT)
BEFORE = Path(__file__).parent / "fixtures" / "store" / "before-layout.json"
NET = "f" * 64
EP = "e" * 64


def old_store() -> MemoryKV:
    store = MemoryKV()
    for key, value in json.loads(BEFORE.read_text()).items():
        store.put(key, value.encode())
    return store


def test_a_store_of_the_previous_version_loads_and_serves() -> None:
    store, kernel = old_store(), FakeKernel()
    node_id = store.get(LAYOUT.node_id)
    p = make_plugin({"SCOPE": "local"}, store=store, kernel=kernel)

    assert kernel.network_ids() == {NET[:12]}  # rebuilt from the old record
    status = p.ok("/Swarmnet.Status")
    assert status["VTEP"] == "192.0.2.7"
    [net] = status["Networks"]
    assert (net["NetworkID"], net["VNI"], net["MTU"], net["Endpoints"], net["Joined"]) == (
        NET, 256, 1400, 1, 1,
    )  # fmt: skip
    info = p.ok("/NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})["Value"]
    assert info["mac"] == "02:42:0a:4d:00:02" and info["joined"] is True

    # The VTEP moved to its own key, with its value; the node ID stayed where it was.
    assert store.get(LAYOUT.legacy_vtep) is None
    moved = store.get(LAYOUT.vtep)
    assert moved is not None and json.loads(moved) == {"v": 1, "vtep": "192.0.2.7"}
    assert store.get(LAYOUT.node_id) == node_id

    # Old records are rewritten in the new format when they change.
    p.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    raw = store.get(LAYOUT.endpoint(NET, EP))
    assert raw is not None and json.loads(raw)["v"] == 1
    assert decode(EndpointRecord, raw).joined is False

    # The IPAM state written before serves on: the next free address, then a release.
    pool_id = "SwarmnetLocal/10.77.0.0/24"  # what RequestPool returned then
    got = p.ok("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}})
    assert got["Address"] == "10.77.0.3/24"
    p.ok("/IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": "10.77.0.2"})
    p.ok("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    p.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert kernel.network_ids() == set()
    assert json.loads(store.get(LAYOUT.vni) or b"{}")["by_network"] == {}


def test_a_move_cut_short_keeps_the_new_key_and_drops_the_old() -> None:
    store = MemoryKV()
    store.put(LAYOUT.vtep, encode(VtepRecord(ipaddress.ip_address("192.0.2.8"))))
    store.put(LAYOUT.legacy_vtep, b'{"vtep": "192.0.2.7"}')  # the delete never happened
    state = LocalState(store, LAYOUT, DriverConfig())
    assert state.vtep() == ipaddress.ip_address("192.0.2.8")
    assert store.get(LAYOUT.legacy_vtep) is None


def test_the_setting_overrides_the_learned_vtep_without_a_store_read() -> None:
    store = MemoryKV()
    setting = DriverConfig(data_path_addr=ipaddress.ip_address("192.0.2.1"))
    state = LocalState(store, LAYOUT, setting)
    state.set_vtep(ipaddress.ip_address("192.0.2.9"))
    assert state.vtep() == ipaddress.ip_address("192.0.2.1")
    assert state.learned_vtep() == ipaddress.ip_address("192.0.2.9")
    assert decode(VtepRecord, store.get(LAYOUT.vtep) or b"").vtep == state.learned_vtep()


def test_records_round_trip_with_a_version_and_refuse_a_newer_one() -> None:
    net = NetworkRecord(
        network_id=NET,
        vni=300,
        mtu=1450,
        encrypted=True,
        gateways=(ipaddress.ip_interface("10.1.0.1/24"), ipaddress.ip_interface("fd00::1/64")),
        options={"encrypted": ""},
    )
    raw = encode(net)
    assert json.loads(raw)["v"] == 1
    assert decode(NetworkRecord, raw) == net
    ep = EndpointRecord(NET, EP, "02:42:0a:01:00:02", ipaddress.ip_interface("10.1.0.2/24"))
    assert decode(EndpointRecord, encode(ep.with_join("/x"))) == ep.with_join("/x")
    newer = {**json.loads(raw), "v": 2}
    with pytest.raises(CorruptRecord, match="newer than this version"):
        decode(NetworkRecord, json.dumps(newer).encode())


def test_networks_stored_before_the_tuning_are_tuned_unless_encrypted() -> None:
    state = LocalState(MemoryKV(), LAYOUT, DriverConfig())
    plain = {"network_id": NET, "vni": 300, "mtu": 1450}  # no "tuned": an older writer
    assert decode(NetworkRecord, json.dumps(plain).encode()).tuned
    assert state.spec(decode(NetworkRecord, json.dumps(plain).encode())).tuned
    sealed = json.dumps({**plain, "encrypted": True, "tuned": True}).encode()
    assert not state.spec(decode(NetworkRecord, sealed)).tuned
