"""The IPAM use cases (libnetwork's IpamDriver protocol, in typed form).

Two address spaces. The global one is what swarm managers allocate from; its
state lives in the ``shared`` store (one per cluster once etcd is there). The
local one is what each node (and dockerd without swarm) allocates from; its
state lives in the host's ``local`` store. On a node the local space mostly
mirrors the global one: dockerd asks there for the very pool and addresses the
manager chose, so explicit requests for what is already held succeed.

Every change is a read-modify-write of one record through ``KV.update``, so two
requests, threads or managers never hand out the same subnet or address. The
service keeps no state of its own: a new instance over the same stores behaves
exactly like the old one.

Per space (``local`` or ``global``), ``core.layout`` names two kinds of key: the
space's index (``pool_index.PoolIndex``) and one record per pool
(``pool_record.PoolRecord``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_interface, ip_network
from typing import TypeVar

from core.iptypes import IPAddress, IPInterface, IPNetwork
from core.layout import StoreLayout
from ipam import pool_index, pool_record, spans
from ipam.config import IpamConfig
from ipam.errors import AddressOutOfPool, InvalidRequest, PoolOverlap, UnknownPool
from ipam.messages import SERIAL_OPTION, AddressGrant, AddressRequest, PoolGrant, PoolRequest
from ipam.pool_record import PoolRecord
from ipam.poolid import PoolRef, decode
from ipam.store_port import KV
from ipam.subnets import within

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class _Space:
    name: str
    kv: KV
    key: str
    layout: StoreLayout

    @property
    def index_key(self) -> str:
        return self.layout.ipam_index(self.key)

    def pool_key(self, net: IPNetwork) -> str:
        return self.layout.ipam_pool(self.key, str(net))


def _update(kv: KV, key: str, step: Callable[[bytes | None], tuple[bytes | None, T]]) -> T:
    """``kv.update`` with ``step`` also returning a result; gives the committed run's result."""
    runs: list[tuple[bytes | None, T]] = []

    def fn(current: bytes | None) -> bytes | None:
        new, result = step(current)
        runs.append((new, result))
        return new

    written = kv.update(key, fn)
    for new, result in reversed(runs):
        if new is written or new == written:
            return result
    raise RuntimeError(f"store: update of {key} wrote a value the update function never returned")


class IpamService:
    LOCAL_SPACE = "SwarmnetLocal"
    GLOBAL_SPACE = "SwarmnetGlobal"

    def __init__(
        self,
        *,
        local: KV,
        shared: KV,
        layout: StoreLayout,
        config: IpamConfig,
        host_networks: Callable[[], Iterable[IPNetwork]],
        new_incarnation: Callable[[], str] = lambda: secrets.token_hex(6),
    ) -> None:
        self._config = config
        self._host_networks = host_networks
        self._new_incarnation = new_incarnation
        self._spaces = {
            self.LOCAL_SPACE: _Space(self.LOCAL_SPACE, local, "local", layout),
            self.GLOBAL_SPACE: _Space(self.GLOBAL_SPACE, shared, "global", layout),
        }
        # The last pool index read or written per space, with its bytes: a pure
        # memo (same bytes, same index) that spares decoding thousands of pools
        # when nobody else wrote in between.
        self._index_memo: dict[str, tuple[bytes, pool_index.PoolIndex]] = {}

    # -- GetCapabilities, GetDefaultAddressSpaces ---------------------------------

    def capabilities(self) -> tuple[bool, bool]:
        """(RequiresMACAddress, RequiresRequestReplay).

        RequiresMACAddress makes libnetwork send each endpoint's MAC with its
        RequestAddress: the owner that tells a second ``--ip`` from a replay
        (``addresses``). libnetwork then picks a random MAC for endpoints that
        have none, instead of the driver deriving one from the IP."""
        return True, self._config.requires_replay

    def default_address_spaces(self) -> tuple[str, str]:
        return self.LOCAL_SPACE, self.GLOBAL_SPACE

    # -- RequestPool, ReleasePool -------------------------------------------------

    def request_pool(self, req: PoolRequest) -> PoolGrant:
        space = self._space(req.address_space)
        sub = req.sub_pool
        if req.pool is None:
            if sub is not None:
                raise InvalidRequest(f"SubPool: {sub} is given without a Pool")
            if req.v6:
                raise InvalidRequest(
                    "V6: there is no default IPv6 pool; give the network an IPv6 --subnet"
                )
            net, inc, created = self._reserve_dynamic(space)
        else:
            net = req.pool
            if sub is not None and not within(sub, net):
                raise InvalidRequest(f"SubPool: {sub} is not inside Pool {net}")
            net, inc, created = self._reserve_explicit(space, net)
            if not created and self._config.standalone and space.name == self.LOCAL_SPACE:
                raise PoolOverlap(
                    f"Pool {net} is already used by another network in this address space; "
                    "give each network its own --subnet"
                )
        ref = PoolRef(space.name, net, sub)
        try:
            self._hold(space, ref, inc, req.options)
        except BaseException:
            if created:
                self._unreserve(space, net, inc)
            raise
        how = "dynamic" if req.pool is None else ("new" if created else "already held")
        log.info("RequestPool %s: granted (%s)", ref, how)
        return PoolGrant(pool_id=str(ref), pool=net, data={})

    def release_pool(self, pool_id: str) -> None:
        ref = self._decode(pool_id)
        space = self._spaces[ref.space]
        key = space.pool_key(ref.pool)

        # Result: the deleted record, "kept" (other ranges still hold the pool), or
        # None (not allocated: never, or released already).
        def step(current: bytes | None) -> tuple[bytes | None, PoolRecord | str | None]:
            if current is None:
                return None, None
            rec = PoolRecord.decode(current, key)
            if ref.sub_key not in rec.holders:
                return current, None
            rest = pool_record.without_holder(rec, ref.sub_key)
            return (None, rec) if rest is None else (rest.encode(), "kept")

        gone = _update(space.kv, key, step)
        if gone is None:
            log.info("ReleasePool %s: not allocated, nothing to release", ref)
        elif isinstance(gone, str):
            log.info("ReleasePool %s: released; other ranges still hold the pool", ref)
        else:
            self._unreserve(space, ref.pool, gone.incarnation)
            left = spans.size(gone.used)
            log.info("ReleasePool %s: released, %d address(es) were still allocated", ref, left)

    # -- RequestAddress, ReleaseAddress -------------------------------------------

    def request_address(self, req: AddressRequest) -> AddressGrant:
        ref = self._decode(req.pool_id)
        space = self._spaces[ref.space]
        key = space.pool_key(ref.pool)
        if req.address is not None:
            pool_record.offset_of(ref.pool, req.address)  # bad input fails before the store
        serial_option = req.options.get(SERIAL_OPTION)

        def step(current: bytes | None) -> tuple[bytes | None, pool_record.Outcome]:
            rec = self._held(current, key, ref)
            # The request's option wins; otherwise the pool's (--ipam-opt) applies.
            serial = (
                serial_option
                if serial_option is not None
                else (rec.holders[ref.sub_key].get(SERIAL_OPTION))
            )
            out = pool_record.allocate(
                rec,
                sub_pool=ref.sub_pool,
                explicit=req.address,
                gateway=req.is_gateway,
                serial=serial == "true",
                owner=req.owner,
            )
            return (current if out.record is rec else out.record.encode()), out

        out = _update(space.kv, key, step)
        address = pool_record.address_at(ref.pool, out.offset)
        kind = "gateway" if req.is_gateway else "address"
        if out.replayed:
            log.debug("RequestAddress %s: %s %s was allocated, granted again", ref, kind, address)
        else:
            log.debug("RequestAddress %s: %s %s allocated", ref, kind, address)
        return AddressGrant(address=_interface(address, ref.pool), data={})

    def release_address(self, pool_id: str, address: IPAddress) -> None:
        ref = self._decode(pool_id)
        space = self._spaces[ref.space]
        key = space.pool_key(ref.pool)
        try:
            off = pool_record.offset_of(ref.pool, address)
        except AddressOutOfPool:
            if address.version == ref.pool.version and address in ref.pool:
                log.info("ReleaseAddress %s: %s is never allocated", ref, address)
                return
            raise

        # No read first: the update already tells "not allocated" apart, and a
        # read would be a second etcd round trip on every container stop.
        def step(current: bytes | None) -> tuple[bytes | None, bool]:
            if current is None:
                return None, False
            rec, was = pool_record.release(PoolRecord.decode(current, key), off)
            return (rec.encode() if was else current), was

        if _update(space.kv, key, step):
            log.debug("ReleaseAddress %s: %s released", ref, address)
        else:
            log.info("ReleaseAddress %s: %s is not allocated, nothing to release", ref, address)

    # -- helpers --------------------------------------------------------------------

    def _space(self, name: str) -> _Space:
        space = self._spaces.get(name)
        if space is None:
            known = " or ".join(self._spaces)
            raise InvalidRequest(f"AddressSpace: {name!r} is unknown; use {known}")
        return space

    def _decode(self, pool_id: str) -> PoolRef:
        return decode(pool_id, tuple(self._spaces))

    @staticmethod
    def _held(current: bytes | None, key: str, ref: PoolRef) -> PoolRecord:
        if current is None:
            raise UnknownPool(f"PoolID {ref} is not allocated (released, or never requested)")
        rec = PoolRecord.decode(current, key)
        if ref.sub_key not in rec.holders:
            raise UnknownPool(f"PoolID {ref} is not allocated (released, or never requested)")
        return rec

    def _index(self, space: _Space, current: bytes | None) -> pool_index.PoolIndex:
        if current is None:
            return pool_index.PoolIndex()
        memo = self._index_memo.get(space.key)
        if memo is not None and (memo[0] is current or memo[0] == current):
            return memo[1]
        index = pool_index.PoolIndex.decode(current, space.index_key)
        self._index_memo[space.key] = (current, index)
        return index

    def _reserve_dynamic(self, space: _Space) -> tuple[IPNetwork, str, bool]:
        inc = self._new_incarnation()
        host = [n for n in self._host_networks() if n.prefixlen > 0]
        defaults = self._config.default_pools
        mask = self._config.mask_length

        def step(
            current: bytes | None,
        ) -> tuple[bytes | None, tuple[IPNetwork, bytes, pool_index.PoolIndex]]:
            index = self._index(space, current)
            new, net = pool_index.reserve_dynamic(index, defaults, mask, host, inc)
            raw = new.encode()
            return raw, (net, raw, new)

        net, raw, new = _update(space.kv, space.index_key, step)
        self._index_memo[space.key] = (raw, new)
        return net, inc, True

    def _reserve_explicit(self, space: _Space, net: IPNetwork) -> tuple[IPNetwork, str, bool]:
        fresh = self._new_incarnation()

        def step(current: bytes | None) -> tuple[bytes | None, tuple[str, bool]]:
            index = self._index(space, current)
            new, inc, created = pool_index.reserve_explicit(index, net, fresh)
            return (new.encode() if created else current), (inc, created)

        inc, created = _update(space.kv, space.index_key, step)
        return net, inc, created

    def _unreserve(self, space: _Space, net: IPNetwork, inc: str) -> None:
        def step(current: bytes | None) -> tuple[bytes | None, None]:
            index = self._index(space, current)
            new = pool_index.unreserve(index, net, inc)
            return (current if new is index else new.encode()), None

        _update(space.kv, space.index_key, step)

    def _hold(self, space: _Space, ref: PoolRef, inc: str, options: Mapping[str, str]) -> None:
        key = space.pool_key(ref.pool)
        opts = dict(options)

        def step(current: bytes | None) -> tuple[bytes | None, None]:
            rec = PoolRecord.decode(current, key) if current is not None else None
            if rec is None or rec.incarnation != inc:
                # New pool, or leftovers of an earlier pool with the same subnet.
                rec = PoolRecord(pool=ref.pool, incarnation=inc)
            return pool_record.with_holder(rec, ref.sub_key, opts).encode(), None

        _update(space.kv, key, step)

    # -- start-up -------------------------------------------------------------------

    def sweep(self, *, shared_too: bool) -> list[str]:
        """Release subnets reserved in an index but held by no pool record.

        RequestPool reserves the subnet in the index, then writes the pool record;
        ReleasePool deletes the record, then the reservation. A crash in between
        leaves a reservation nobody can release (ReleasePool answers "not
        allocated") and every later request skips the subnet. Run at start, before
        any request, only on spaces no other process writes: the local space, and
        the global one when it lives in this host's own store (``shared_too``).
        Also released: pools that hold no address at all, not even a gateway.
        Docker asks for the gateway right after every RequestPool, so such a
        pool is one whose reply a crash lost (Docker re-sends the call and gets
        another pool), or one whose ReleasePool a crash cut short. Left alone,
        either is held for good.

        Returns a line per released subnet.
        """
        out: list[str] = []
        for space in self._spaces.values():
            if space.name == self.GLOBAL_SPACE and not shared_too:
                continue
            index = self._index(space, space.kv.get(space.index_key))
            for cidr, inc in sorted(index.pools.items()):
                net = ip_network(cidr)
                key = space.pool_key(net)
                raw = space.kv.get(key)
                rec = None if raw is None else PoolRecord.decode(raw, key)
                if rec is not None and rec.incarnation == inc:
                    if rec.used or not self._drop_if_empty(space, key, inc):
                        continue
                    why = "it never handed out an address"
                else:
                    why = "no pool record held it"
                self._unreserve(space, net, inc)
                out.append(f"{space.name} pool {cidr}: released, {why}")
        return out

    @staticmethod
    def _drop_if_empty(space: _Space, key: str, inc: str) -> bool:
        def step(current: bytes | None) -> tuple[bytes | None, bool]:
            if current is None:
                return None, True
            rec = PoolRecord.decode(current, key)
            if rec.incarnation != inc or rec.used:
                return current, False
            return None, True

        return _update(space.kv, key, step)


def _interface(address: IPAddress, pool: IPNetwork) -> IPInterface:
    return ip_interface(f"{address}/{pool.prefixlen}")
