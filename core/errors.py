"""Error kinds, as libnetwork's ``types/types.go`` has them: what went wrong, not how to say it.

``driver/``, ``ipam/`` and the store adapters raise errors of these kinds (a
domain error subclasses one); ``plugin/errors.py`` alone turns a kind into an
HTTP status. An exception of no kind is a bug.
"""

from __future__ import annotations


class BadRequest(Exception):
    """The request is malformed or does not fit; the message says which field."""


class NotFound(Exception):
    """The request names an object (network, endpoint, pool) we do not hold."""


class Conflict(Exception):
    """The request clashes with what exists, in a way a retry cannot explain."""


class Exhausted(Exception):
    """The request is fine, but no room is left (VNIs, subnets, addresses, marks)."""


class Unsupported(Exception):
    """The request needs something this host cannot do (e.g. ESP in the kernel)."""


class Unavailable(Exception):
    """Something we depend on (the shared store, a network's kernel state) is not there now."""


class Internal(Exception):
    """We failed: the kernel refused, or a stored record cannot be read."""
