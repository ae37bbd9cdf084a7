"""How full each pool is: a read-only view of a space's records, for metrics.

Reads what ``ipam.service`` writes, at the keys ``core.layout`` names (the space's pool
index, then its pool records in one range read) and changes nothing. Only pools the
index holds count, with the record of their incarnation: leftovers of a released pool
do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_network

from core.iptypes import IPNetwork
from core.layout import StoreLayout
from ipam import pool_record, spans
from ipam.pool_index import PoolIndex
from ipam.pool_record import PoolRecord
from ipam.store_port import KV


@dataclass(frozen=True)
class PoolUsage:
    pool: IPNetwork
    usable: int  # addresses that may be handed out (not the network or broadcast address)
    allocated: int  # gateway included

    @property
    def free(self) -> int:
        return self.usable - self.allocated


def pool_usage(kv: KV, layout: StoreLayout, space: str) -> list[PoolUsage]:
    """Every pool of ``space`` (``local`` or ``global``) with its address counts."""
    index = PoolIndex.decode(kv.get(layout.ipam_index(space)), f"{space} pool index")
    records = kv.list(layout.ipam_pools(space))
    out = []
    for cidr, incarnation in sorted(index.pools.items()):
        net = ip_network(cidr)
        lo, hi = pool_record.usable(net)
        key = layout.ipam_pool(space, str(net))
        raw = records.get(key)
        rec = None if raw is None else PoolRecord.decode(raw, key)
        used = spans.size(rec.used) if rec is not None and rec.incarnation == incarnation else 0
        out.append(PoolUsage(pool=net, usable=hi - lo + 1, allocated=used))
    return out
