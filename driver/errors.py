"""Domain errors of the network driver. Each carries the HTTP status the protocol layer sends."""

from __future__ import annotations


class DriverError(Exception):
    http_status = 500


class InvalidArgument(DriverError):
    """The request is malformed or names something that does not fit. Says which field."""

    http_status = 400


class UnknownObject(InvalidArgument):
    """A network or endpoint the driver has never been told about."""


class Conflict(DriverError):
    http_status = 409


class Exhausted(DriverError):
    """No VNI left in the configured range."""

    http_status = 507


class Unsupported(DriverError):
    """The request needs something this host cannot do (e.g. ESP in the kernel)."""

    http_status = 501
