"""The composition root: the one place that chooses concrete adapters.

``create_app`` runs once, when ``swarmnet plugin`` or ``swarmnet serve`` starts (or in a
test), never at import time: importing opens no socket, file or netlink handle.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask

from core.layout import StoreLayout
from driver.kernel.ipsec_port import Ipsec
from driver.kernel.no_ipsec import NoIpsec
from driver.kernel.port import Kernel
from driver.lb.port import LoadBalancer
from driver.lb.programmer import LoadBalancing, sandbox_locator
from driver.peers import ControlPlane
from driver.service import NetworkDriverService
from driver.store_port import KV
from ipam.config import IpamConfig
from ipam.service import IpamService
from plugin import admin, errors, routes
from plugin.settings import Settings, SettingsError

if TYPE_CHECKING:
    from plugin.lbcollector import Collector
    from plugin.metrics import Metrics

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes
# Where every key lives (core.layout): versioned, so a new layout can sit beside the old.
STORE_ROOT = "/swarmnet/v1"


def _netlink_kernel(settings: Settings) -> Kernel:
    from driver.kernel.netlink import NetlinkKernel

    return NetlinkKernel(netns_dir=settings.netns_dir)


def _netlink_ipsec() -> Ipsec:
    from driver.kernel.ipsec import NetlinkIpsec

    # The plugin runs in the host's network namespace ("network": "host").
    return NetlinkIpsec(None)


def _netlink_load_balancer() -> LoadBalancer:
    from driver.kernel import procsys
    from driver.kernel.lb import NetlinkLoadBalancer

    problem = procsys.make_writable()
    if problem is not None:
        # IPVS still balances without Docker's sysctls, only less well (connections to a
        # removed task hang until their timeout): better than no balancing at all.
        log.warning(
            "%s; IPVS sysctls (net.ipv4.vs.*) and the bridge-nf-call sysctls of our "
            "network namespaces stay at the kernel's defaults",
            problem,
        )
    return NetlinkLoadBalancer(require_sysctls=problem is None)


def _embedded_store(settings: Settings) -> KV:
    from plugin.store.sqlite import SqliteKV

    # Only root reads the state directory: the store in it holds the IPsec master keys.
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.state_dir, 0o700)
    return SqliteKV(settings.store_path)


def _node_id(local: KV, layout: StoreLayout) -> str:
    """A stable identity for this host in the shared store, made once and kept."""
    key = layout.node_id

    def make(current: bytes | None) -> bytes:
        return current if current else uuid.uuid4().hex.encode()

    value = local.update(key, make)
    assert value is not None
    return value.decode()


def _etcd(settings: Settings, local: KV, layout: StoreLayout) -> tuple[KV, ControlPlane]:
    from plugin.controlplane import STOPPED_TTL, EtcdControlPlane
    from plugin.store.etcd import EtcdKV, EtcdTLS

    tls = EtcdTLS(ca=settings.etcd_ca, cert=settings.etcd_cert, key=settings.etcd_key)
    kv = EtcdKV(settings.etcd_endpoints, tls)
    control = EtcdControlPlane(
        kv,
        ttl=settings.peer_ttl,
        node=_node_id(local, layout),
        layout=layout,
        stopped_ttl=STOPPED_TTL,
        watch_kv=EtcdKV(settings.peer_relays, tls) if settings.peer_relays else None,
    )
    return kv, control


def _load_balancing(
    settings: Settings,
    network: NetworkDriverService,
    local: KV,
    shared: KV,
    lb: LoadBalancer | None,
    layout: StoreLayout,
    node_id: str,
) -> tuple[Callable[[], Mapping[str, Any]], tuple[Callable[[], None], ...]]:
    """Service VIP load balancing: the node-side programmer, and on managers the collector.

    Returns the status function and what to stop on the way out. Off by setting, and
    off (with one log line and a status line) on a kernel without IPVS; the collector
    still runs then, since the other nodes' sandboxes need the records.
    """
    if not settings.load_balancing:
        log.info("load balancing: off (LOAD_BALANCING=off)")
        return (lambda: {"State": "off", "Reason": "LOAD_BALANCING=off"}), ()
    background: list[Callable[[], None]] = []
    collector = _collector(settings, shared, layout, node_id)
    if collector is not None:
        collector.start()
        background.append(collector.close)
    reason = lb.unavailable() if lb is not None else "no load balancer configured"
    if lb is None or reason is not None:
        log.warning(
            "load balancing: off on this node: %s; service VIPs on swarmnet networks do not "
            "balance here (--endpoint-mode dnsrr works)",
            reason,
        )

        def off() -> Mapping[str, Any]:
            out: dict[str, Any] = {"State": "off", "Reason": reason}
            if collector is not None:
                out["Collector"] = collector.describe()
            return out

        return off, tuple(background)
    programmer = LoadBalancing(
        lb, local, shared, sandbox_locator(settings.sandbox_root), layout=layout
    )
    network.on_sandbox_change = programmer.nudge
    programmer.start()
    background.insert(0, programmer.close)

    def on() -> Mapping[str, Any]:
        out = dict(programmer.status())
        if collector is not None:
            out["Collector"] = collector.describe()
        return out

    return on, tuple(background)


def _collector(
    settings: Settings, shared: KV, layout: StoreLayout, node_id: str
) -> Collector | None:
    """The elected collector of the swarm's service view; None where there is no swarm."""
    if settings.driver.scope != "global":
        return None
    from plugin.election import Election, EtcdElection, LocalElection
    from plugin.lbcollector import Collector, vni_networks
    from plugin.store.etcd import EtcdKV
    from plugin.swarmview import SwarmView

    # Several managers on one etcd: one of them collects. One host: it is the one.
    election: Election = (
        EtcdElection(
            shared, identity=f"{socket.gethostname()}/{node_id[:12]}", key=layout.lb_collector
        )
        if isinstance(shared, EtcdKV)
        else LocalElection()
    )
    return Collector(
        SwarmView(settings.docker_host),
        shared,
        election,
        vni_networks(shared, layout),
        layout=layout,
    )


def _metrics(settings: Settings, network: NetworkDriverService) -> Metrics | None:
    """With METRICS_ADDR set: the registry, observing the driver from here on. The worker
    serves it (plugin/cli.py); nothing listens here."""
    if settings.metrics_addr is None:
        return None
    from plugin.metrics import Metrics

    metrics = Metrics()
    metrics.observe(network)
    return metrics


def create_app(
    settings: Settings,
    *,
    kernel: Kernel | None = None,
    local: KV | None = None,
    shared: KV | None = None,
    control: ControlPlane | None = None,
    ipsec: Ipsec | None = None,
    load_balancer: LoadBalancer | None = None,
    reconcile: bool = True,
) -> Flask:
    kernel_is_real = kernel is None
    layout = StoreLayout(STORE_ROOT)
    if ipsec is None:
        # The real xfrm goes with the real kernel; a test's fake kernel has no IPsec
        # unless it brings one, so its encrypted networks are refused.
        ipsec = _netlink_ipsec() if kernel is None else NoIpsec("the kernel in use has no IPsec")
    if kernel is None and load_balancer is None:
        load_balancer = _netlink_load_balancer()
    kernel = kernel if kernel is not None else _netlink_kernel(settings)
    local = local if local is not None else _embedded_store(settings)
    if shared is None and settings.etcd_endpoints:
        shared, control = _etcd(settings, local, layout)
    # One host: the shared state lives in the same embedded store as the local one.
    shared = shared if shared is not None else local
    try:
        ipam_config = IpamConfig.from_strings(
            settings.default_addr_pools,
            settings.default_addr_pool_mask_length,
            standalone=settings.driver.scope == "local",
        )
    except ValueError as e:
        raise SettingsError(str(e)) from None

    network = NetworkDriverService(
        settings.driver, kernel, local, shared, control, ipsec, layout=layout
    )
    metrics = _metrics(settings, network)  # metrics hook
    ipam = IpamService(
        local=local,
        shared=shared,
        layout=layout,
        config=ipam_config,
        host_networks=kernel.host_networks,
    )
    if reconcile:
        changes = network.reconcile()
        # Before any request: subnets a crash left reserved with no pool record.
        changes += ipam.sweep(shared_too=shared is local)
        for line in changes:
            log.info("reconcile: %s", line)
        log.info("reconcile: %d change(s)", len(changes))
        if metrics is not None:  # metrics hook
            metrics.reconciled(changes)

    if load_balancer is not None or kernel_is_real:
        lb_status, background = _load_balancing(
            settings, network, local, shared, load_balancer, layout, _node_id(local, layout)
        )
    else:
        lb_status, background = (lambda: {"State": "off", "Reason": "not configured"}), ()

    app = Flask("swarmnet")
    # The largest body dockerd sends is a few kB; anything past this is a 413.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["swarmnet"] = routes.Services(
        network=network,
        manager=network.manager,
        ipam=ipam,
        lb_status=lb_status,
        background=background,
    )
    app.register_blueprint(routes.bp)
    app.register_blueprint(admin.bp)
    errors.install(app)
    if metrics is not None:  # metrics hook
        metrics.attach(app, network, lb_status, local, shared, layout)
    return app
