"""Keys, SPIs and the key ring: what every node must derive alike without negotiating."""

from __future__ import annotations

import ipaddress
import itertools
import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import Conflict, Exhausted
from core.layout import StoreLayout
from driver.ipsec_keys import (
    GENERATIONS_KEPT,
    INDEX_MAX,
    MASTER_BYTES,
    Ack,
    Generation,
    KeyRing,
    claim_index,
    derive_key,
    encrypted_mtu,
    hkdf_sha256,
    load_indexes,
    spi,
    spi_parts,
)
from driver.ipsec_store import IpsecStore
from plugin.app import STORE_ROOT
from plugin.store.memory import MemoryKV

LAYOUT = StoreLayout(STORE_ROOT)

A = ipaddress.IPv4Address("192.0.2.1")
B = ipaddress.IPv4Address("192.0.2.2")


def test_hkdf_matches_rfc5869_test_cases() -> None:
    # Test case 1 (with salt and info) and test case 3 (no salt, no info).
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
        salt=bytes.fromhex("000102030405060708090a0b0c"),
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    assert hkdf_sha256(bytes.fromhex("0b" * 22), b"", 42).hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_spi_layout_names_the_generation_and_both_nodes() -> None:
    assert spi(1, 1, 2) == 0x02001002
    assert spi_parts(0x02001002) == (2, 1, 2)
    assert spi(254, 1, 2) >> 24 == 255
    assert spi(255, 1, 2) >> 24 == 1  # wraps, never to 0
    with pytest.raises(ValueError, match="index"):
        spi(1, 0, 2)
    with pytest.raises(ValueError, match="index"):
        spi(1, 1, INDEX_MAX + 1)


@given(
    st.integers(1, 10_000),
    st.lists(st.tuples(st.integers(1, INDEX_MAX), st.integers(1, INDEX_MAX)), unique=True),
)
def test_spis_never_collide_within_a_window_of_live_generations(
    first: int, pairs: list[tuple[int, int]]
) -> None:
    live = range(first, first + GENERATIONS_KEPT)
    made = [spi(g, s, d) for g, (s, d) in itertools.product(live, pairs)]
    assert len(set(made)) == len(made)
    assert all(value >= 0x01000000 for value in made)


def test_keys_are_per_direction_and_generation_and_identical_on_every_node() -> None:
    master = bytes(range(32))
    ab = derive_key(master, A, B, spi(1, 1, 2))
    assert len(ab) == 20
    assert derive_key(master, A, B, spi(1, 1, 2)) == ab  # any node, any time
    assert derive_key(master, B, A, spi(1, 2, 1)) != ab
    assert derive_key(master, A, B, spi(2, 1, 2)) != ab
    assert derive_key(bytes(32), A, B, spi(1, 1, 2)) != ab


def test_mtu_allows_for_vxlan_and_esp_like_docker() -> None:
    assert encrypted_mtu(1500, 50) == 1424
    assert encrypted_mtu(9000, 50) == 8924
    assert encrypted_mtu(1450, 50) == 1372  # 1374 rounded down to a multiple of 4


def gen(number: int, created: float = 0.0) -> Generation:
    return Generation(number, bytes([number]) * MASTER_BYTES, created)


def test_key_ring_chooses_the_newest_generation_a_peer_can_receive() -> None:
    ring = KeyRing((gen(3), gen(4), gen(5)))
    assert ring.chosen(None) == 5  # a node that reported nothing installs the newest first
    assert ring.chosen(4) == 4
    assert ring.chosen(9) == 5
    assert ring.chosen(1) == 5  # reported only dropped generations: it will catch up
    rotated = ring.rotated(bytes(MASTER_BYTES), 10.0)
    assert [g.number for g in rotated.generations] == [4, 5, 6]
    assert KeyRing.from_json(rotated.to_json()) == rotated


def test_master_secrets_are_never_in_a_repr() -> None:
    ring = KeyRing((gen(7),))
    secret = ring.newest.master
    for text in (repr(ring), str(ring), repr(ring.newest), str(ring.newest)):
        assert secret.hex() not in text and repr(secret) not in text and "redacted" in text


def test_node_indexes_are_claimed_once_lowest_free_first() -> None:
    raw = claim_index(None, "192.0.2.1")
    raw = claim_index(raw, "192.0.2.2")
    assert claim_index(raw, "192.0.2.1") == raw
    assert load_indexes(raw) == {"192.0.2.1": 1, "192.0.2.2": 2}
    full = {f"10.{i >> 8}.{i & 255}.1": i for i in range(1, INDEX_MAX + 1)}
    with pytest.raises(ValueError, match="taken"):
        claim_index(json.dumps(full).encode(), "192.0.2.9")


def test_acks_round_trip() -> None:
    ack = Ack(inbound=3, outbound={"192.0.2.2": 3, "192.0.2.3": 2})
    assert Ack.from_json(ack.to_json()).same(ack)
    assert not Ack(inbound=3).same(ack)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_store_makes_one_key_ring_even_when_nodes_race() -> None:
    kv = MemoryKV()
    rings = []

    def make() -> None:
        rings.append(IpsecStore(kv, LAYOUT).ensure_keyring())

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.to_json() for r in rings}) == 1
    assert rings[0].newest.number == 1


def test_rotation_on_request_respects_the_minimum_gap() -> None:
    clock = Clock()
    store = IpsecStore(MemoryKV(), LAYOUT, wallclock=clock)
    with pytest.raises(Conflict, match="no IPsec keys"):
        store.rotate(30)
    store.ensure_keyring()
    with pytest.raises(Conflict, match="30s apart"):
        store.rotate(30)
    clock.now += 31
    rotation = store.rotate(30)
    assert (rotation.previous, rotation.current) == (1, 2)
    for _ in range(5):
        clock.now += 31
        store.rotate(30)
    ring = store.keyring()
    assert ring is not None
    assert [g.number for g in ring.generations] == [5, 6, 7]


def test_interval_rotation_happens_once_when_every_node_asks() -> None:
    clock, kv = Clock(), MemoryKV()
    stores = [IpsecStore(kv, LAYOUT, wallclock=clock) for _ in range(3)]
    stores[0].ensure_keyring()
    assert all(s.rotate_if_due(3600) is None for s in stores)
    clock.now += 3600
    done = [s.rotate_if_due(3600) for s in stores]
    assert [d.current if d else None for d in done] == [2, None, None]
    assert stores[1].rotate_if_due(0) is None  # 0: only on request


def test_any_node_claims_indexes_for_any_vtep_and_all_agree() -> None:
    kv = MemoryKV()
    one, two = IpsecStore(kv, LAYOUT), IpsecStore(kv, LAYOUT)
    assert one.indexes({"192.0.2.2", "192.0.2.1"}) == {"192.0.2.1": 1, "192.0.2.2": 2}
    assert two.indexes({"192.0.2.3", "192.0.2.1"}) == {"192.0.2.1": 1, "192.0.2.3": 3}
    assert kv.get(LAYOUT.ipsec_nodes) is not None and kv.get(LAYOUT.ipsec_keys) is None


def test_index_exhaustion_is_a_domain_error() -> None:
    kv = MemoryKV()
    kv.put(
        LAYOUT.ipsec_nodes,
        json.dumps({f"10.{i >> 8}.{i & 255}.1": i for i in range(1, INDEX_MAX + 1)}).encode(),
    )
    with pytest.raises(Exhausted):
        IpsecStore(kv, LAYOUT).indexes({"192.0.2.9"})
