"""JSON encoding shared by the stored records."""

from __future__ import annotations

import json
from functools import lru_cache
from ipaddress import ip_network
from typing import Any

from core.iptypes import IPNetwork
from ipam.errors import CorruptRecord

FORMAT = 1


def dump(obj: dict[str, Any]) -> bytes:
    return json.dumps({"v": FORMAT, **obj}, separators=(",", ":")).encode()


def load(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except ValueError:
        raise CorruptRecord(f"store: {what} is not valid JSON") from None
    if not isinstance(obj, dict) or obj.get("v") != FORMAT:
        raise CorruptRecord(f"store: {what} has an unknown format")
    return obj


@lru_cache(maxsize=1 << 16)
def network(text: str) -> IPNetwork:
    """Parse a canonical CIDR we stored (cached: the pool index holds thousands)."""
    return ip_network(text)


@lru_cache(maxsize=1 << 16)
def span(text: str) -> tuple[int, int, int]:
    """(IP version, first address, last address) of a stored CIDR, as integers."""
    net = network(text)
    return net.version, int(net.network_address), int(net.broadcast_address)


def string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(type(v) is str for v in value.values()):
        raise CorruptRecord(f"store: {what} is not a string map")
    return value  # JSON object keys are always strings
