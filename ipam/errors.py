"""IPAM errors, each of a kind (``core.errors``) that plugin/errors.py maps to a status.

Kinds:
- BadRequest: bad input (a malformed or unknown field, an address outside its
  pool, a network or broadcast address, a pool that overlaps another one).
- NotFound: a PoolID we never issued or no longer hold.
- Conflict: the address is taken in a way a replay cannot explain: an endpoint
  asking for the pool's gateway address, or for an address another endpoint
  (another MAC) holds.
- Exhausted: no free subnet in the default pools, no free address in a pool.
- Internal: the store holds a record we cannot read.

Every message names the field (``Pool``, ``SubPool``, ``PoolID``, ``Address``,
``AddressSpace``, ``V6``) or the pool it is about. Messages a user can meet
through the Docker CLI (no free address or subnet, an overlapping pool, an
address in use) are plain sentences that say what to do, as Docker's are.
"""

from __future__ import annotations

from core import errors as kinds


class IpamError(Exception):
    """Every IPAM error; each subclass also names its kind."""


class InvalidRequest(IpamError, kinds.BadRequest):
    """A field is malformed or inconsistent with another one."""


class UnknownPool(IpamError, kinds.NotFound):
    """The PoolID is not one we issued, or its pool has been released."""


class PoolOverlap(IpamError, kinds.BadRequest):
    """An explicit pool overlaps a different pool of the same address space."""


class AddressOutOfPool(IpamError, kinds.BadRequest):
    """The address is not a usable address of the pool."""


class AddressInUse(IpamError, kinds.Conflict):
    pass


class Exhausted(IpamError, kinds.Exhausted):
    pass


class CorruptRecord(IpamError, kinds.Internal):
    pass
