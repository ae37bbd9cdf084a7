"""What the driver persists about this host, and the one codec that reads and writes it.

Records are JSON objects with a format version, ``"v": 1``, as IPAM's are. A record
without ``"v"`` was written before records had one and reads as version 1; a
newer version is refused rather than guessed at. Keys come from ``core.layout``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, TypeVar

from core.errors import Internal
from core.iptypes import IPAddress, IPInterface

FORMAT = 1


@dataclass(frozen=True)
class NetworkRecord:
    network_id: str
    vni: int
    mtu: int
    internal: bool = False
    encrypted: bool = False
    gateways: tuple[IPInterface, ...] = ()
    # The data-path settings (NetworkSpec.tuned). Records written before it read as tuned.
    tuned: bool = True
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class EndpointRecord:
    network_id: str
    endpoint_id: str
    mac: str
    address: IPInterface | None = None
    address_v6: IPInterface | None = None
    joined: bool = False
    sandbox_key: str = ""

    def with_join(self, sandbox_key: str) -> EndpointRecord:
        return replace(self, joined=True, sandbox_key=sandbox_key)

    def with_leave(self) -> EndpointRecord:
        return replace(self, joined=False, sandbox_key="")


@dataclass(frozen=True)
class VtepRecord:
    """This host's address on the underlay, learned from DiscoverNew."""

    vtep: IPAddress | None = None


class CorruptRecord(Internal):
    """A stored record this version cannot read."""


# -- the codec -------------------------------------------------------------------

R = TypeVar("R", NetworkRecord, EndpointRecord, VtepRecord)


@dataclass(frozen=True)
class _Kind:
    dump: Callable[[Any], Any]
    load: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _text_or_none(value: Any) -> str | None:
    return str(value) if value else None


_INTERFACE = _Kind(_text_or_none, lambda v: ipaddress.ip_interface(v) if v else None)
_ADDRESS = _Kind(_text_or_none, lambda v: ipaddress.ip_address(v) if v else None)
_INTERFACES = _Kind(
    lambda v: [str(i) for i in v], lambda v: tuple(ipaddress.ip_interface(i) for i in v)
)
_STRINGS = _Kind(dict, lambda v: MappingProxyType(dict(v)))
_PLAIN = _Kind(_same, _same)

# Fields that are not plain JSON values; the rest are stored as they are.
_KINDS: dict[type, dict[str, _Kind]] = {
    NetworkRecord: {
        "vni": _Kind(int, int),
        "mtu": _Kind(int, int),
        "internal": _Kind(bool, bool),
        "encrypted": _Kind(bool, bool),
        "tuned": _Kind(bool, bool),
        "gateways": _INTERFACES,
        "options": _STRINGS,
    },
    EndpointRecord: {
        "address": _INTERFACE,
        "address_v6": _INTERFACE,
        "joined": _Kind(bool, bool),
    },
    VtepRecord: {"vtep": _ADDRESS},
}


def encode(record: NetworkRecord | EndpointRecord | VtepRecord) -> bytes:
    kinds = _KINDS[type(record)]
    obj = {f.name: kinds.get(f.name, _PLAIN).dump(getattr(record, f.name)) for f in fields(record)}
    return json.dumps({"v": FORMAT, **obj}, sort_keys=True).encode()


def decode(cls: type[R], raw: bytes) -> R:
    """The record in ``raw``; fields it lacks take their defaults (older writers had fewer)."""
    what = cls.__name__
    try:
        obj = json.loads(raw)
    except ValueError:
        raise CorruptRecord(f"store: a {what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise CorruptRecord(f"store: a {what} is not a JSON object")
    version = obj.get("v", FORMAT)  # no "v": written before records had a version
    if version != FORMAT:
        raise CorruptRecord(f"store: a {what} has format {version}, newer than this version")
    kinds = _KINDS[cls]
    given = [f.name for f in fields(cls) if f.name in obj]
    return cls(**{name: kinds.get(name, _PLAIN).load(obj[name]) for name in given})
