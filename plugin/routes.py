"""Thin routes: decode, make one service call, encode.

Each route names the protocol call it serves: libnetwork's remote driver API
(``/NetworkDriver.*``), its remote IPAM API (``/IpamDriver.*``), and the plugin
handshake (``/Plugin.Activate``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, request

from driver.manager import NetworkManager
from driver.service import NetworkDriverService
from ipam.service import IpamService
from plugin import codec

log = logging.getLogger(__name__)

bp = Blueprint("protocol", __name__)

Reply = dict[str, Any]


def _off() -> Mapping[str, Any]:
    return {"State": "off", "Reason": "not configured"}


@dataclass(frozen=True)
class Services:
    network: NetworkDriverService  # the node side
    manager: NetworkManager  # the manager side: AllocateNetwork, FreeNetwork
    ipam: IpamService
    # Load balancing's view for status, and the background parts to stop on the way out.
    lb_status: Callable[[], Mapping[str, Any]] = _off
    background: tuple[Callable[[], None], ...] = ()

    def close(self) -> None:
        """On the way out: stop the background parts, then the control plane flushes."""
        for stop in self.background:
            try:
                stop()
            except Exception:
                log.exception("stopping %r", stop)
        self.network.close()


def services() -> Services:
    s: Services = current_app.extensions["swarmnet"]
    return s


def body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    parsed = codec.parse_body(raw)
    if log.isEnabledFor(logging.DEBUG):
        text = raw[:4096].decode("utf-8", "replace")
        log.debug("%s %s%s", request.path, text, "..." if len(raw) > 4096 else "")
    return parsed


# -- Plugin handshake ------------------------------------------------------------


@bp.post("/Plugin.Activate")
def activate() -> Reply:
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


# -- NetworkDriver ---------------------------------------------------------------


@bp.post("/NetworkDriver.GetCapabilities")
def network_capabilities() -> Reply:
    caps = services().network.capabilities()
    return {"Scope": caps.scope, "ConnectivityScope": caps.connectivity_scope}


@bp.post("/NetworkDriver.AllocateNetwork")
def allocate_network() -> Reply:
    options = services().manager.allocate_network(codec.allocate_network(body()))
    return {"Options": dict(options)}


@bp.post("/NetworkDriver.FreeNetwork")
def free_network() -> Reply:
    services().manager.free_network(codec.network_id(body()))
    return {}


@bp.post("/NetworkDriver.CreateNetwork")
def create_network() -> Reply:
    services().network.create_network(codec.create_network(body()))
    return {}


@bp.post("/NetworkDriver.DeleteNetwork")
def delete_network() -> Reply:
    services().network.delete_network(codec.network_id(body()))
    return {}


@bp.post("/NetworkDriver.CreateEndpoint")
def create_endpoint() -> Reply:
    mac = services().network.create_endpoint(codec.create_endpoint(body()))
    # Only what Docker left empty may be filled in: libnetwork rejects a reply
    # that changes an address or MAC it chose.
    return {"Interface": {"MacAddress": mac}} if mac else {}


@bp.post("/NetworkDriver.EndpointOperInfo")
def endpoint_oper_info() -> Reply:
    net, ep = codec.endpoint_ids(body())
    return {"Value": dict(services().network.endpoint_info(net, ep))}


@bp.post("/NetworkDriver.DeleteEndpoint")
def delete_endpoint() -> Reply:
    services().network.delete_endpoint(*codec.endpoint_ids(body()))
    return {}


@bp.post("/NetworkDriver.Join")
def join() -> Reply:
    reply = services().network.join(codec.join(body()))
    # No Gateway: libnetwork then attaches the container to docker_gwbridge for
    # egress, as with Docker's own overlay driver.
    return {
        "InterfaceName": {"SrcName": reply.src_name, "DstPrefix": reply.dst_prefix},
        "DisableGatewayService": False,
    }


@bp.post("/NetworkDriver.Leave")
def leave() -> Reply:
    services().network.leave(*codec.endpoint_ids(body()))
    return {}


@bp.post("/NetworkDriver.DiscoverNew")
def discover_new() -> Reply:
    node = codec.discovery(body())
    if node is not None:
        services().network.discover_new(node)
    return {}


@bp.post("/NetworkDriver.DiscoverDelete")
def discover_delete() -> Reply:
    node = codec.discovery(body())
    if node is not None:
        services().network.discover_delete(node)
    return {}


@bp.post("/NetworkDriver.ProgramExternalConnectivity")
def program_external_connectivity() -> Reply:
    # Port publishing happens on docker_gwbridge, which libnetwork owns.
    codec.endpoint_ids(body())
    return {}


@bp.post("/NetworkDriver.RevokeExternalConnectivity")
def revoke_external_connectivity() -> Reply:
    codec.endpoint_ids(body())
    return {}


# -- IpamDriver ----------------------------------------------------------------


@bp.post("/IpamDriver.GetCapabilities")
def ipam_capabilities() -> Reply:
    requires_mac, requires_replay = services().ipam.capabilities()
    return {"RequiresMACAddress": requires_mac, "RequiresRequestReplay": requires_replay}


@bp.post("/IpamDriver.GetDefaultAddressSpaces")
def default_address_spaces() -> Reply:
    local, global_ = services().ipam.default_address_spaces()
    return {"LocalDefaultAddressSpace": local, "GlobalDefaultAddressSpace": global_}


@bp.post("/IpamDriver.RequestPool")
def request_pool() -> Reply:
    grant = services().ipam.request_pool(codec.request_pool(body()))
    return {"PoolID": grant.pool_id, "Pool": str(grant.pool), "Data": dict(grant.data)}


@bp.post("/IpamDriver.ReleasePool")
def release_pool() -> Reply:
    services().ipam.release_pool(codec.pool_id(body()))
    return {}


@bp.post("/IpamDriver.RequestAddress")
def request_address() -> Reply:
    grant = services().ipam.request_address(codec.request_address(body()))
    return {"Address": str(grant.address), "Data": dict(grant.data)}


@bp.post("/IpamDriver.ReleaseAddress")
def release_address() -> Reply:
    services().ipam.release_address(*codec.release_address(body()))
    return {}
