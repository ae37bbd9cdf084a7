"""Parts 2 and 3's store side: sandboxes joined to one network, and service records."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from bench.lb.scratch import Scratch
from core.layout import StoreLayout
from driver.lb.model import Backend, SandboxState, ServiceRecord, mark
from driver.records import EndpointRecord, encode
from plugin.app import STORE_ROOT
from plugin.store.sqlite import SqliteKV

IP = ipaddress.IPv4Address
LAYOUT = StoreLayout(STORE_ROOT)
NETWORK = "b10b" * 16


def join_sandboxes(scratch: Scratch, local: SqliteKV, prefix: str, count: int) -> list[Path]:
    """``count`` sandboxes, each with a joined endpoint on NETWORK in the local store."""
    out = []
    for i in range(count):
        path = scratch.netns(f"{prefix}{i}")
        ep = EndpointRecord(
            network_id=NETWORK,
            endpoint_id=f"{prefix}{i}".encode().hex().ljust(64, "0"),
            mac=f"02:42:0a:63:01:{i:02x}",
            address=ipaddress.ip_interface(f"10.99.1.{10 + i}/24"),
        ).with_join(str(path))
        local.put(LAYOUT.endpoint(NETWORK, ep.endpoint_id), encode(ep))
        out.append(path)
    return out


def key(rec: ServiceRecord) -> str:
    return LAYOUT.lb_service(rec.network_id, rec.service_id)


def record(
    service_id: str, vip: IP, index: int, backends: Sequence[IP], name: str = "web"
) -> ServiceRecord:
    return ServiceRecord(
        network_id=NETWORK,
        service_id=service_id,
        name=name,
        vip=vip,
        fwmark=mark(index),
        backends=tuple(sorted(Backend(ip) for ip in backends)),
    )


def holds(state: SandboxState, fwmark: int, ip: IP) -> bool:
    return any(vs.fwmark == fwmark and any(b.ip == ip for b in vs.backends) for vs in state)
