"""What the load balancing keeps in the shared store and programs into sandboxes.

One ``ServiceRecord`` per (network, service) whose VIP is on one of our networks,
written by the elected collector on a manager and read by every node:

    <root>/lb/services/<network id>/<service id>     (core.layout)

Records are versioned (``"v": 1``); a reader ignores a record of a newer version
instead of guessing at it.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1

# Firewall marks of ours: 0x736e ("sn") in the upper 16 bits, so they never meet
# Docker's own marks (a counter from 256) or a user's. One policy rule with this
# mask sends every marked packet to ROUTE_TABLE.
MARK_BASE = 0x736E0000
MARK_MASK = 0xFFFF0000
MARK_MAX_INDEX = 0xFFFF
ROUTE_TABLE = 0x736E  # 29550: holds one "local default dev lo" route (the hairpin fix)


def mark(index: int) -> int:
    if not 1 <= index <= MARK_MAX_INDEX:
        raise ValueError(f"fwmark index {index} outside 1-{MARK_MAX_INDEX}")
    return MARK_BASE | index


def is_our_mark(value: int) -> bool:
    return value & MARK_MASK == MARK_BASE and value != MARK_BASE


@dataclass(frozen=True, order=True)
class Backend:
    """One task of a service on one network. Weight 0: draining (its task is shutting down)."""

    ip: ipaddress.IPv4Address
    weight: int = 1


@dataclass(frozen=True)
class VirtualService:
    """One IPVS service in a sandbox: traffic to ``vip`` is marked ``fwmark`` and balanced."""

    vip: ipaddress.IPv4Address
    fwmark: int
    backends: tuple[Backend, ...]  # sorted by IP, one per IP

    def __post_init__(self) -> None:
        if not is_our_mark(self.fwmark):
            raise ValueError(f"fwmark {self.fwmark:#x} is not in our range")
        ips = [b.ip for b in self.backends]
        if ips != sorted(set(ips)):
            raise ValueError("backends must be sorted by IP with one entry per IP")


def virtual_service(
    vip: ipaddress.IPv4Address, fwmark: int, backends: dict[ipaddress.IPv4Address, int]
) -> VirtualService:
    return VirtualService(
        vip=vip,
        fwmark=fwmark,
        backends=tuple(Backend(ip, w) for ip, w in sorted(backends.items())),
    )


SandboxState = tuple[VirtualService, ...]  # sorted by fwmark; what one sandbox holds


def sandbox_state(services: list[VirtualService] | tuple[VirtualService, ...]) -> SandboxState:
    return tuple(sorted(services, key=lambda s: s.fwmark))


@dataclass(frozen=True)
class ServiceRecord:
    network_id: str
    service_id: str
    name: str
    vip: ipaddress.IPv4Address
    fwmark: int
    backends: tuple[Backend, ...]

    def virtual_service(self) -> VirtualService:
        return VirtualService(vip=self.vip, fwmark=self.fwmark, backends=self.backends)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": FORMAT_VERSION,
                "network_id": self.network_id,
                "service_id": self.service_id,
                "name": self.name,
                "vip": str(self.vip),
                "fwmark": self.fwmark,
                "backends": [{"ip": str(b.ip), "weight": b.weight} for b in self.backends],
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ServiceRecord | None:
        """The record, or None for a record of a newer format this version cannot read."""
        d: dict[str, Any] = json.loads(raw)
        if int(d.get("v", 0)) > FORMAT_VERSION:
            return None
        backends = tuple(
            sorted(
                Backend(ipaddress.IPv4Address(b["ip"]), int(b["weight"]))
                for b in d.get("backends", [])
            )
        )
        return cls(
            network_id=str(d["network_id"]),
            service_id=str(d["service_id"]),
            name=str(d.get("name", "")),
            vip=ipaddress.IPv4Address(d["vip"]),
            fwmark=int(d["fwmark"]),
            backends=backends,
        )
