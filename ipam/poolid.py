"""PoolIDs: ``<AddressSpace>/<Pool>`` or ``<AddressSpace>/<Pool>/<SubPool>``.

Like Docker's default IPAM. A PoolID says everything about the pool, so
decoding needs no store; anything we would not have issued is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_network

from core.iptypes import IPNetwork
from ipam.errors import UnknownPool
from ipam.subnets import within


@dataclass(frozen=True)
class PoolRef:
    space: str
    pool: IPNetwork
    sub_pool: IPNetwork | None = None

    def __str__(self) -> str:
        text = f"{self.space}/{self.pool}"
        return f"{text}/{self.sub_pool}" if self.sub_pool is not None else text

    @property
    def sub_key(self) -> str:
        return "" if self.sub_pool is None else str(self.sub_pool)


def decode(pool_id: str, spaces: tuple[str, ...]) -> PoolRef:
    bad = UnknownPool(f"PoolID {pool_id!r} was not issued by swarmnet-overlay")
    parts = pool_id.split("/")
    if len(parts) not in (3, 5) or parts[0] not in spaces:
        raise bad
    try:
        pool = ip_network(f"{parts[1]}/{parts[2]}")
        sub = ip_network(f"{parts[3]}/{parts[4]}") if len(parts) == 5 else None
    except ValueError:
        raise bad from None
    ref = PoolRef(parts[0], pool, sub)
    if str(ref) != pool_id or (sub is not None and not within(sub, pool)):
        raise bad
    return ref
