"""IPAM errors. Each carries the HTTP status the plugin's error map returns.

Statuses:
- 400: bad input (a malformed or unknown field, a PoolID we never issued or no
  longer hold, an address outside its pool, a network or broadcast address,
  a pool that overlaps another one).
- 409: the address is taken in a way a replay cannot explain: an endpoint
  asking for the pool's gateway address, or for an address another endpoint
  (another MAC) holds.
- 507: exhausted (no free subnet in the default pools, no free address in a
  pool). "Insufficient Storage": the request is fine, there is no room left.
- 500: the store holds a record we cannot read.

Every message names the field (``Pool``, ``SubPool``, ``PoolID``, ``Address``,
``AddressSpace``, ``V6``) or the pool it is about. Messages a user can meet
through the Docker CLI (no free address or subnet, an overlapping pool, an
address in use) are plain sentences that say what to do, as Docker's are.
"""

from __future__ import annotations


class IpamError(Exception):
    http_status = 400


class InvalidRequest(IpamError):
    """A field is malformed or inconsistent with another one."""


class UnknownPool(IpamError):
    """The PoolID is not one we issued, or its pool has been released."""


class PoolOverlap(IpamError):
    """An explicit pool overlaps a different pool of the same address space."""


class AddressOutOfPool(IpamError):
    """The address is not a usable address of the pool."""


class AddressInUse(IpamError):
    http_status = 409


class Exhausted(IpamError):
    http_status = 507


class CorruptRecord(IpamError):
    http_status = 500
