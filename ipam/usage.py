"""How full each pool is: a read-only view of a space's records, for metrics.

Reads the store layout of ``ipam.service`` (the space's pool index, then its pool
records in one range read) and changes nothing. Only pools the index holds count,
with the record of their incarnation: leftovers of a released pool do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_network

from ipam import addresses, spans
from ipam.addresses import PoolRecord
from ipam.pools import PoolIndex
from ipam.ports import KV
from ipam.service import KEY_ROOT
from ipam.subnets import IPNetwork


@dataclass(frozen=True)
class PoolUsage:
    pool: IPNetwork
    usable: int  # addresses that may be handed out (not the network or broadcast address)
    allocated: int  # gateway included

    @property
    def free(self) -> int:
        return self.usable - self.allocated


def pool_usage(kv: KV, space: str) -> list[PoolUsage]:
    """Every pool of ``space`` (``local`` or ``global``) with its address counts."""
    index = PoolIndex.decode(kv.get(f"{KEY_ROOT}/{space}/index"), f"{space} pool index")
    prefix = f"{KEY_ROOT}/{space}/pools/"
    records = kv.list(prefix)
    out = []
    for cidr, incarnation in sorted(index.pools.items()):
        net = ip_network(cidr)
        lo, hi = addresses.usable(net)
        key = prefix + str(net).replace("/", "_")
        raw = records.get(key)
        rec = None if raw is None else PoolRecord.decode(raw, key)
        used = spans.size(rec.used) if rec is not None and rec.incarnation == incarnation else 0
        out.append(PoolUsage(pool=net, usable=hi - lo + 1, allocated=used))
    return out
