"""VNI allocation: one VNI per network, unique across the swarm.

The allocation table is one document in the shared store, changed only through
``KV.update`` (compare-and-swap), so two managers, or two threads, never hand
out the same VNI. Allocation is keyed by network ID, so asking twice for the
same network, from any node, returns the same VNI.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from core.errors import Conflict, Exhausted
from driver import names
from driver.store_port import KV

log = logging.getLogger(__name__)

VNI_MAX = (1 << 24) - 1


@dataclass(frozen=True)
class VniTable:
    by_network: dict[str, int]
    cursor: int  # the last VNI handed out; the next search starts after it

    @classmethod
    def load(cls, raw: bytes | None) -> VniTable:
        if raw is None:
            return cls({}, 0)
        d = json.loads(raw)
        return cls({k: int(v) for k, v in d["by_network"].items()}, int(d["cursor"]))

    def dump(self) -> bytes:
        return json.dumps({"by_network": self.by_network, "cursor": self.cursor}).encode()


def next_free(used: set[int], lo: int, hi: int, cursor: int) -> int | None:
    """The first VNI in [lo, hi] after ``cursor`` that is not used, wrapping around once."""
    span = hi - lo + 1
    start = cursor + 1 if lo <= cursor < hi else lo
    for i in range(span):
        vni = lo + (start - lo + i) % span
        if vni not in used:
            return vni
    return None


class VniAllocator:
    def __init__(self, store: KV, key: str, vni_range: tuple[int, int]) -> None:
        self.store = store
        self.key = key  # the table's one key (core.layout: <root>/vni)
        self._lo, self._hi = vni_range

    def allocate(self, network_id: str, requested: int | None = None) -> int:
        def change(raw: bytes | None) -> bytes:
            table = VniTable.load(raw)
            have = table.by_network.get(network_id)
            if have is not None:
                if requested is not None and requested != have:
                    raise Conflict(
                        f"network {names.short(network_id)} already has VNI {have}, not {requested}"
                    )
                return raw if raw is not None else table.dump()
            used = set(table.by_network.values())
            if requested is not None:
                if requested in used:
                    owner = next(k for k, v in table.by_network.items() if v == requested)
                    raise Conflict(f"VNI {requested} is in use by network {names.short(owner)}")
                vni, cursor = requested, table.cursor
            else:
                found = next_free(used, self._lo, self._hi, table.cursor)
                if found is None:
                    raise Exhausted(
                        f"no free VNI left in the range {self._lo}-{self._hi} (VNI_RANGE setting)"
                    )
                vni, cursor = found, found
            return VniTable({**table.by_network, network_id: vni}, cursor).dump()

        raw = self.store.update(self.key, change)
        assert raw is not None
        return VniTable.load(raw).by_network[network_id]

    def owners(self) -> list[str]:
        """Every network ID that holds a VNI."""
        return sorted(VniTable.load(self.store.get(self.key)).by_network)

    def lookup(self, network_id: str) -> int | None:
        return VniTable.load(self.store.get(self.key)).by_network.get(network_id)

    def release(self, network_id: str) -> int | None:
        released: list[int] = []

        def change(raw: bytes | None) -> bytes | None:
            released.clear()
            table = VniTable.load(raw)
            if network_id not in table.by_network:
                return raw
            rest = dict(table.by_network)
            released.append(rest.pop(network_id))
            return VniTable(rest, table.cursor).dump()

        self.store.update(self.key, change)
        return released[0] if released else None
