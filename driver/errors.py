"""The driver's names for two error kinds (``core.errors``); it raises the others as is."""

from __future__ import annotations

from core.errors import BadRequest, NotFound


class InvalidArgument(BadRequest):
    """The request is malformed or names something that does not fit. Says which field."""


class UnknownObject(NotFound):
    """A network or endpoint the driver has never been told about."""
