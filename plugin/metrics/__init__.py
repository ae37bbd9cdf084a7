"""Prometheus metrics (``METRICS_ADDR``): what is counted, what is read at scrape time,
and the registry they share. docs/metrics.md lists every metric.

Only ``plugin/`` imports prometheus_client: the driver reports through the no-op-default
ports of driver/events.py, and state is read through the services' own read methods.
One registry per app (no module globals), so tests build as many as they like.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector

from core.layout import StoreLayout
from driver.service import NetworkDriverService
from driver.store_port import KV
from plugin.metrics.calls import CallMetrics
from plugin.metrics.observer import Observer
from plugin.metrics.scrape import StateCollector

EXTENSION = "swarmnet.metrics"


def _version() -> str:
    try:
        return importlib.metadata.version("swarmnet-overlay")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_*: RSS, open fds, CPU seconds, start time (of the worker: the scraped one).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        info = Gauge(
            "swarmnet_build_info", "The plugin's version (1).", ["version"], registry=self.registry
        )
        info.labels(_version()).set(1)
        self.observer = Observer(self.registry)

    def observe(self, network: NetworkDriverService) -> None:
        """Before the reconcile: the driver's and the control plane's events come here."""
        network.peering.events = self.observer
        network.encryption.events = self.observer
        control = network.control
        if hasattr(control, "events"):  # the etcd control plane; the local one has none
            control.events = self.observer
            self.registry.register(self.observer.etcd_collector())

    def reconciled(self, changes: Iterable[str]) -> None:
        self.observer.reconciled(changes)

    def attach(
        self,
        app: Flask,
        network: NetworkDriverService,
        lb_status: Callable[[], Mapping[str, Any]],
        local: KV,
        shared: KV,
        layout: StoreLayout,
    ) -> None:
        """Once the app is built: state read at scrape time, and every call timed."""
        state = StateCollector(network, lb_status, local, shared, layout, self.observer)
        self.registry.register(state)
        calls = CallMetrics(self.registry, (rule.rule for rule in app.url_map.iter_rules()))
        app.wsgi_app = calls.wrap(app.wsgi_app)  # type: ignore[method-assign,assignment]
        app.extensions[EXTENSION] = self
