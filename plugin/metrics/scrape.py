"""State read at scrape time: networks, endpoints and peers, IPAM pools, IPsec, load
balancing. A custom collector, so nothing is kept up to date between scrapes and the
numbers are the services' own answers (``status()``, the stores, the kernel).

Labels are bounded: a network ID (there are as many as networks), a pool's CIDR, an
address space, a state. Never an endpoint ID, a container or an address.

A part that cannot be read (etcd down for the global pools, say) is left out of that
scrape and counted in ``swarmnet_scrape_errors_total{part}``; the others still answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from core.layout import StoreLayout
from driver.ipsec_keys import REQID
from driver.service import NetworkDriverService
from driver.store_port import KV
from ipam.usage import pool_usage
from plugin.metrics.observer import Observer

log = logging.getLogger(__name__)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class StateCollector:
    def __init__(
        self,
        network: NetworkDriverService,
        lb_status: Callable[[], Mapping[str, Any]],
        local: KV,
        shared: KV,
        layout: StoreLayout,
        observer: Observer,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self._network = network
        self._lb_status = lb_status
        self._local = local
        self._shared = shared
        self._layout = layout
        self._observer = observer
        self._now = wallclock

    def collect(self) -> Iterator[Metric]:
        for part, read in (
            ("networks", self._networks),
            ("ipam", self._ipam),
            ("ipsec", self._ipsec),
            ("lb", self._lb),
        ):
            try:
                # Built in full before any is yielded: a failure leaves the part out whole.
                metrics = list(read())
            except Exception as e:
                log.warning("metrics: cannot read %s: %s", part, e)
                self._observer.scrape_errors.labels(part).inc()
                continue
            yield from metrics

    # -- networks, endpoints, peers ------------------------------------------------

    def _networks(self) -> Iterator[Metric]:
        status = self._network.status()
        nets: list[Mapping[str, Any]] = list(status["Networks"])  # type: ignore[call-overload]
        count = _gauge("swarmnet_networks", "Networks this node has.")
        count.add_metric([], float(len(nets)))
        info = _gauge(
            "swarmnet_network_info",
            "One per network on this node (1), with its VNI and whether it is encrypted "
            "or internal.",
            ("network", "vni", "encrypted", "internal"),
        )
        endpoints = _gauge(
            "swarmnet_endpoints", "Endpoints of the network on this node.", ("network",)
        )
        joined = _gauge(
            "swarmnet_endpoints_joined",
            "Endpoints of the network on this node that are in a container.",
            ("network",),
        )
        peers = _gauge(
            "swarmnet_remote_peers",
            "Remote endpoints of the network with their FDB and neighbour entries in the "
            "kernel (one of each per peer), read from the kernel.",
            ("network",),
        )
        broken = _gauge(
            "swarmnet_network_broken",
            "1 while the network could not be rebuilt on this node and is being retried.",
            ("network",),
        )
        for n in nets:
            nid = str(n["NetworkID"])
            info.add_metric(
                [nid, str(n["VNI"]), _flag(n["Encrypted"]), _flag(n["Internal"])], 1.0
            )
            endpoints.add_metric([nid], float(n["Endpoints"]))
            joined.add_metric([nid], float(n["Joined"]))
            peers.add_metric([nid], float(n["RemotePeers"]))
            broken.add_metric([nid], 1.0 if n.get("Broken") else 0.0)
        yield from (count, info, endpoints, joined, peers, broken)

    # -- IPAM ------------------------------------------------------------------------

    def _ipam(self) -> Iterator[Metric]:
        pools = _gauge("swarmnet_ipam_pools", "Pools allocated in the address space.", ("space",))
        free = _gauge(
            "swarmnet_ipam_addresses_free",
            "Addresses of the pool that can still be handed out.",
            ("space", "pool"),
        )
        used = _gauge(
            "swarmnet_ipam_addresses_allocated",
            "Addresses of the pool handed out (gateway included).",
            ("space", "pool"),
        )
        # The global space lives in the shared store (etcd): each node reports what it reads.
        for space, kv in (("local", self._local), ("global", self._shared)):
            usage = pool_usage(kv, self._layout, space)
            pools.add_metric([space], float(len(usage)))
            for u in usage:
                free.add_metric([space, str(u.pool)], float(u.free))
                used.add_metric([space, str(u.pool)], float(u.allocated))
        yield from (pools, free, used)

    # -- IPsec -------------------------------------------------------------------------

    def _ipsec(self) -> Iterator[Metric]:
        enc = self._network.encryption
        supported = enc.capability().supported
        capable = _gauge(
            "swarmnet_ipsec_supported", "1 when this node's kernel can carry encrypted networks."
        )
        capable.add_metric([], 1.0 if supported else 0.0)
        yield capable
        sas = _gauge(
            "swarmnet_ipsec_sas", "IPsec security associations of the plugin in the kernel."
        )
        sas.add_metric(
            [], float(sum(1 for sa in enc.ipsec.list_sas() if sa.reqid == REQID))
        )
        yield sas
        ring = enc.store.keyring()
        if ring is None:
            return  # no encrypted network was ever made: no keys, no age
        generation = _gauge(
            "swarmnet_ipsec_key_generation", "The newest IPsec key generation in the store."
        )
        generation.add_metric([], float(ring.newest.number))
        age = _gauge(
            "swarmnet_ipsec_key_age_seconds",
            "Age of the newest IPsec key generation (from its creation time in the store).",
        )
        age.add_metric([], max(0.0, self._now() - ring.newest.created))
        yield from (generation, age)

    # -- load balancing ----------------------------------------------------------------

    def _lb(self) -> Iterator[Metric]:
        lb = self._lb_status()
        on = _gauge(
            "swarmnet_lb_enabled", "1 when service VIP load balancing programs this node."
        )
        on.add_metric([], 1.0 if lb.get("State") == "on" else 0.0)
        yield on
        collector = lb.get("Collector")
        if collector:
            leader = _gauge(
                "swarmnet_lb_collector_leader",
                "1 when this node is the elected collector of the swarm's service view.",
            )
            leader.add_metric([], 1.0 if collector.get("Role") == "leader" else 0.0)
            yield leader
        if lb.get("State") != "on":
            return
        sandboxes = _gauge(
            "swarmnet_lb_sandboxes",
            "Container sandboxes load balancing knows on this node, by state.",
            ("state",),
        )
        for state, key in (("programmed", "Programmed"), ("waiting", "Waiting"),
                           ("given_up", "GivenUp")):
            sandboxes.add_metric([state], float(lb.get("Sandboxes", {}).get(key, 0)))
        vips = _gauge("swarmnet_lb_vips", "Service VIPs of the network.", ("network",))
        backends = _gauge(
            "swarmnet_lb_backends", "Backends of the network's service VIPs.", ("network",)
        )
        programmed = _gauge(
            "swarmnet_lb_sandboxes_programmed",
            "Sandboxes on this node with the network's VIPs programmed.",
            ("network",),
        )
        for net in lb.get("Networks", []):
            nid = str(net["NetworkID"])
            vips.add_metric([nid], float(len(net["Services"])))
            backends.add_metric([nid], float(sum(len(s["Backends"]) for s in net["Services"])))
            programmed.add_metric([nid], float(net["SandboxesProgrammed"]))
        yield from (sandboxes, vips, backends, programmed)


def _flag(value: object) -> str:
    return "true" if value else "false"
