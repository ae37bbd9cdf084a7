"""IPsec state in the shared store (SQLite on one host, etcd across hosts).

Three kinds of key (``core.layout``): the key ring (live generations with their
master secrets), the node index table (VTEP address -> 12-bit index), and one
acknowledgement per node (what it has installed and what it sends with).

Every change to a shared document goes through ``KV.update`` (compare-and-swap),
so concurrent nodes agree on one key ring and one index per node. Anyone who
can read the key ring (``<root>/ipsec/keys``) can derive every key: see docs/encryption.md.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import Conflict, Exhausted
from core.layout import StoreLayout
from driver.ipsec_keys import MASTER_BYTES, Ack, Generation, KeyRing, claim_index, load_indexes
from driver.store_port import KV


@dataclass(frozen=True)
class Rotation:
    previous: int
    current: int


class IpsecStore:
    def __init__(
        self,
        kv: KV,
        layout: StoreLayout,
        *,
        wallclock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._kv = kv
        self._keys = layout
        self._now = wallclock
        self._random = random_bytes
        self._indexes: dict[str, int] = {}  # claims are never changed or released: cacheable

    # -- key ring ------------------------------------------------------------

    def keyring(self) -> KeyRing | None:
        raw = self._kv.get(self._keys.ipsec_keys)
        return None if raw is None else KeyRing.from_json(raw)

    def ensure_keyring(self) -> KeyRing:
        """The key ring, made with generation 1 if there is none yet."""
        ring = self.keyring()
        if ring is not None:
            return ring
        master, now = self._random(MASTER_BYTES), self._now()

        def make(raw: bytes | None) -> bytes:
            if raw is not None:
                return raw  # another node made it first: use theirs
            return KeyRing((Generation(1, master, now),)).to_json()

        made = self._kv.update(self._keys.ipsec_keys, make)
        assert made is not None
        return KeyRing.from_json(made)

    def rotate(self, min_gap: float) -> Rotation:
        """Add a generation now. Refused while the newest is younger than ``min_gap`` seconds.

        The gap keeps at most one rotation in flight: the ring keeps three
        generations, so a node is never asked to drop one a peer may still use.
        """
        master, now = self._random(MASTER_BYTES), self._now()
        seen: list[int] = []

        def change(raw: bytes | None) -> bytes:
            seen.clear()
            if raw is None:
                raise Conflict(
                    "no IPsec keys to rotate yet: they are made with the first encrypted network"
                )
            ring = KeyRing.from_json(raw)
            age = now - ring.newest.created
            if age < min_gap:
                raise Conflict(
                    f"IPsec generation {ring.newest.number} is only {max(age, 0):.0f}s old; "
                    f"rotations are at least {min_gap:.0f}s apart so that every node has "
                    "switched to it first"
                )
            seen.append(ring.newest.number)
            return ring.rotated(master, now).to_json()

        raw = self._kv.update(self._keys.ipsec_keys, change)
        assert raw is not None
        return Rotation(previous=seen[0], current=KeyRing.from_json(raw).newest.number)

    def rotate_if_due(self, interval: float) -> Rotation | None:
        """Rotate if the newest generation is ``interval`` seconds old. Any node may ask;
        compare-and-swap makes exactly one rotation out of simultaneous asks."""
        if interval <= 0:
            return None
        ring = self.keyring()
        if ring is None or self._now() - ring.newest.created < interval:
            return None
        master, now = self._random(MASTER_BYTES), self._now()
        rotated: list[Rotation] = []

        def change(raw: bytes | None) -> bytes | None:
            rotated.clear()
            if raw is None:
                return None
            current = KeyRing.from_json(raw)
            if now - current.newest.created < interval:
                return raw  # someone else rotated in between
            new = current.rotated(master, now)
            rotated.append(Rotation(current.newest.number, new.newest.number))
            return new.to_json()

        self._kv.update(self._keys.ipsec_keys, change)
        return rotated[0] if rotated else None

    # -- node indexes ----------------------------------------------------------

    def indexes(self, vteps: set[str]) -> dict[str, int]:
        """Index of each VTEP, claiming the missing ones (for any node: claims are by address)."""
        if vteps <= set(self._indexes):
            return {v: self._indexes[v] for v in vteps}
        table = load_indexes(self._kv.get(self._keys.ipsec_nodes))
        for vtep in sorted(vteps - set(table)):

            def claim(raw: bytes | None, vtep: str = vtep) -> bytes:
                try:
                    return claim_index(raw, vtep)
                except ValueError as e:
                    raise Exhausted(str(e)) from None

            table = load_indexes(self._kv.update(self._keys.ipsec_nodes, claim))
        self._indexes = table
        return {v: table[v] for v in vteps}

    # -- acknowledgements --------------------------------------------------------

    def acks(self) -> dict[str, Ack]:
        return {
            key[len(self._keys.ipsec_acks) :]: Ack.from_json(raw)
            for key, raw in self._kv.list(self._keys.ipsec_acks).items()
        }

    def put_ack(self, vtep: str, ack: Ack) -> None:
        self._kv.put(self._keys.ipsec_ack(vtep), ack.to_json())

    def delete_ack(self, vtep: str) -> None:
        self._kv.delete(self._keys.ipsec_ack(vtep))
