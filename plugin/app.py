"""The composition root: the one place that chooses concrete adapters.

``create_app`` runs once, when ``swarmnet plugin`` or ``swarmnet serve`` starts (or in a
test), never at import time: importing opens no socket, file or netlink handle.
"""

from __future__ import annotations

import logging
import uuid

from flask import Flask

from driver.encryption import Ipsec, NoIpsec
from driver.kernel.port import Kernel
from driver.peers import ControlPlane
from driver.ports import KV
from driver.service import NetworkDriverService
from ipam.config import IpamConfig
from ipam.service import IpamService
from plugin import admin, errors, routes
from plugin.settings import Settings, SettingsError

log = logging.getLogger(__name__)


def _netlink_kernel(settings: Settings) -> Kernel:
    from driver.kernel.netlink import NetlinkKernel

    return NetlinkKernel(netns_dir=settings.netns_dir)


def _netlink_ipsec() -> Ipsec:
    from driver.kernel.ipsec import NetlinkIpsec

    # The plugin runs in the host's network namespace ("network": "host").
    return NetlinkIpsec(None)


def _embedded_store(settings: Settings) -> KV:
    from plugin.store.sqlite import SqliteKV

    return SqliteKV(settings.store_path)


def _node_id(local: KV) -> str:
    """A stable identity for this host in the shared store, made once and kept."""
    key = "/swarmnet/v1/local/node-id"

    def make(current: bytes | None) -> bytes:
        return current if current else uuid.uuid4().hex.encode()

    value = local.update(key, make)
    assert value is not None
    return value.decode()


def _etcd(settings: Settings, local: KV) -> tuple[KV, ControlPlane]:
    from plugin.controlplane import EtcdControlPlane
    from plugin.store.etcd import EtcdKV, EtcdTLS

    kv = EtcdKV(
        settings.etcd_endpoints,
        EtcdTLS(ca=settings.etcd_ca, cert=settings.etcd_cert, key=settings.etcd_key),
    )
    return kv, EtcdControlPlane(kv, ttl=settings.peer_ttl, node=_node_id(local))


def create_app(
    settings: Settings,
    *,
    kernel: Kernel | None = None,
    local: KV | None = None,
    shared: KV | None = None,
    control: ControlPlane | None = None,
    ipsec: Ipsec | None = None,
    reconcile: bool = True,
) -> Flask:
    if ipsec is None:
        # The real xfrm goes with the real kernel; a test's fake kernel has no IPsec
        # unless it brings one, so its encrypted networks are refused.
        ipsec = _netlink_ipsec() if kernel is None else NoIpsec("the kernel in use has no IPsec")
    kernel = kernel if kernel is not None else _netlink_kernel(settings)
    local = local if local is not None else _embedded_store(settings)
    if shared is None and settings.etcd_endpoints:
        shared, control = _etcd(settings, local)
    # One host: the shared state lives in the same embedded store as the local one.
    shared = shared if shared is not None else local
    try:
        ipam_config = IpamConfig.from_strings(
            settings.default_addr_pools, settings.default_addr_pool_mask_length
        )
    except ValueError as e:
        raise SettingsError(str(e)) from None

    network = NetworkDriverService(settings.driver, kernel, local, shared, control, ipsec)
    ipam = IpamService(
        local=local, shared=shared, config=ipam_config, host_networks=kernel.host_networks
    )
    if reconcile:
        changes = network.reconcile()
        for line in changes:
            log.info("reconcile: %s", line)
        log.info("reconcile: %d change(s)", len(changes))

    app = Flask("swarmnet")
    app.extensions["swarmnet"] = routes.Services(network=network, ipam=ipam)
    app.register_blueprint(routes.bp)
    app.register_blueprint(admin.bp)
    errors.install(app)
    return app
