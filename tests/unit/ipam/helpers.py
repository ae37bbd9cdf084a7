"""Builders shared by the IPAM unit tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import ip_address, ip_network

from core.iptypes import IPAddress, IPNetwork
from core.layout import StoreLayout
from ipam.config import IpamConfig
from ipam.messages import (
    GATEWAY_TYPE,
    REQUEST_ADDRESS_TYPE,
    SERIAL_OPTION,
    AddressRequest,
    PoolRequest,
)
from ipam.service import IpamService
from ipam.store_port import KV
from plugin.app import STORE_ROOT
from tests.unit.ipam.fakes import CasKV

GLOBAL = IpamService.GLOBAL_SPACE
LOCAL = IpamService.LOCAL_SPACE
GATEWAY = {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE}
SERIAL = {SERIAL_OPTION: "true"}
SWARM_GATEWAY = {**GATEWAY, **SERIAL}  # what swarmkit sends for a network's gateway

LAYOUT = StoreLayout(STORE_ROOT)


def net(text: str) -> IPNetwork:
    return ip_network(text)


def addr(text: str) -> IPAddress:
    return ip_address(text)


def service(
    pools: str = "10.10.0.0/22",
    mask: str = "24",
    *,
    local: KV | None = None,
    shared: KV | None = None,
    host: Iterable[str] = (),
) -> IpamService:
    host_nets = [net(h) for h in host]
    shared = shared if shared is not None else CasKV()
    return IpamService(
        local=local if local is not None else shared,
        shared=shared,
        layout=LAYOUT,
        config=IpamConfig.from_strings(pools, mask),
        host_networks=lambda: list(host_nets),
    )


def pool(
    svc: IpamService,
    subnet: str | None = None,
    sub: str | None = None,
    *,
    space: str = GLOBAL,
    options: Mapping[str, str] | None = None,
    v6: bool = False,
) -> str:
    """RequestPool; returns the PoolID."""
    grant = svc.request_pool(
        PoolRequest(
            address_space=space,
            pool=net(subnet) if subnet else None,
            sub_pool=net(sub) if sub else None,
            options=dict(options or {}),
            v6=v6,
        )
    )
    return grant.pool_id


def address(
    svc: IpamService,
    pool_id: str,
    want: str | None = None,
    options: Mapping[str, str] | None = None,
) -> str:
    """RequestAddress; returns the address as Docker sees it ("10.1.2.3/24")."""
    grant = svc.request_address(
        AddressRequest(
            pool_id=pool_id, address=addr(want) if want else None, options=dict(options or {})
        )
    )
    return str(grant.address)
