"""Node records: ``<root>/nodes/<node-id>`` says that a node is alive and what it can do.

The value is what the node announced (``{"vtep", "esp", "esp_detail"}``) plus ``node``
and ``ttl``; a node whose plugin stopped gracefully also says ``"stopped": true``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping

from core.layout import StoreLayout
from plugin.store.etcd import EtcdKV, StoreUnavailable


def node_key(keys: StoreLayout, node: str) -> str:
    return keys.nodes + node


def node_value(info: Mapping[str, object], node: str, ttl: int, stopped: bool = False) -> bytes:
    record = {**info, "node": node, "ttl": ttl}
    if stopped:
        record["stopped"] = True
    return json.dumps(record).encode()


def list_nodes(kv: EtcdKV, keys: StoreLayout) -> dict[str, Mapping[str, object]]:
    """Every node's record by node ID; none while etcd is unreachable."""
    try:
        listed = kv.list(keys.nodes)
    except StoreUnavailable:
        return {}
    out: dict[str, Mapping[str, object]] = {}
    for key, raw in listed.items():
        with contextlib.suppress(ValueError):
            rec = json.loads(raw)
            if isinstance(rec, dict):
                out[key[len(keys.nodes) :]] = rec
    return out
