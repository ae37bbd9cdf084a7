"""A graceful stop is not a death: keep this node's records published past it.

SIGTERM (`docker plugin disable`, an upgrade) stops the plugin while the node's containers
keep running and its kernel entries stay. Without a hand-over the records lapse with our
lease within PEER_TTL, and every other node drops this node's FDB and neighbour entries while
its containers still run: an upgrade slower than PEER_TTL would cut them off until the new
process publishes again. So ``close`` moves everything onto a lease of ``stopped_ttl``; the
next process puts everything on its own lease again.
"""

from __future__ import annotations

import logging
from typing import Any

from plugin.controlplane import gateway
from plugin.controlplane.keeper import Keeper
from plugin.controlplane.nodes import node_key, node_value
from plugin.store.etcd import StoreUnavailable, b64

log = logging.getLogger(__name__)

# Seconds a stopped plugin's endpoints stay published: an upgrade or a restart by hand
# takes far less; a node that dies while its plugin is stopped is forgotten after this.
STOPPED_TTL = 300


def hand_over(keeper: Keeper, ttl: int) -> None:
    """Move what ``keeper`` publishes onto a new lease of ``ttl`` seconds.

    Guarded by our node record still being on our lease: gunicorn's SIGHUP starts the new
    worker before the old one stops, and the new one's records must stay on the new one's
    lease.
    """
    lease = keeper.lease
    records, deletes, info = keeper.outbox.to_hand_over()
    if lease is None:
        return
    keys, key = keeper.keys, node_key(keeper.keys, keeper.node)
    try:
        stopped = gateway.grant(keeper.kv, ttl)
        ops = [gateway.delete_op(keys.peer(*k)) for k in sorted(deletes)]
        ops += [
            gateway.put_op(keys.peer(r.network_id, r.endpoint_id), r.to_json(), stopped)
            for r in records
        ]
        # Last, so the guard of every batch before it still sees our lease.
        value = node_value(info, keeper.node, keeper.ttl, stopped=True)
        ops.append(gateway.put_op(key, value, stopped))
        guard: list[dict[str, Any]] = [
            {"key": b64(key), "target": "LEASE", "result": "EQUAL", "lease": lease}
        ]
        if not gateway.commit(keeper.kv, ops, guard):
            log.info(
                "control plane: a newer process of this node publishes already; nothing handed over"
            )
            return
    except StoreUnavailable as e:
        log.warning(
            "control plane: could not keep this node's endpoints published past "
            "the stop (%s); the others drop them within %d s",
            e,
            keeper.ttl,
        )
        return
    log.info(
        "control plane: %d endpoint(s) stay published for %d s while the plugin is "
        "stopped (lease %x)",
        len(records),
        ttl,
        stopped,
    )
