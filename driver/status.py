"""``swarmnet status``: which networks, how many endpoints and peers each, which nodes.

Read-only, from the store and the kernel; never key material.
"""

from __future__ import annotations

from collections.abc import Mapping

from driver.config import DriverConfig
from driver.kernel.port import Kernel
from driver.local_state import LocalState
from driver.peering import Peering
from driver.reconcile import BrokenNetworks


def status(
    config: DriverConfig,
    kernel: Kernel,
    state: LocalState,
    peering: Peering,
    broken: BrokenNetworks,
) -> Mapping[str, object]:
    networks = []
    for net in state.networks():
        eps = state.endpoints(net.network_id)
        networks.append(
            {
                "NetworkID": net.network_id,
                "VNI": net.vni,
                "MTU": net.mtu,
                "Internal": net.internal,
                "Encrypted": net.encrypted,
                "Endpoints": len(eps),
                "Joined": sum(1 for ep in eps if ep.joined),
                "RemotePeers": _peer_count(kernel, net.network_id),
                # Why the network could not be rebuilt at start ("" when it is fine).
                "Broken": broken.why(net.network_id),
            }
        )
    vtep = state.vtep()
    nodes = peering.control.nodes() or {"": peering.node_facts()}
    return {
        "Scope": config.scope,
        "VTEP": str(vtep) if vtep else "",
        "ControlPlane": peering.control.describe(),
        "Networks": networks,
        # Which nodes can carry encrypted networks (each node's record says).
        "Nodes": [
            {
                "Node": str(rec.get("vtep") or name or "this node"),
                "ESP": rec.get("esp"),  # None: the node predates the field
                "ESPDetail": str(rec.get("esp_detail") or ""),
            }
            for name, rec in sorted(nodes.items(), key=lambda kv: str(kv[1].get("vtep") or kv[0]))
        ],
    }


def _peer_count(kernel: Kernel, network_id: str) -> int:
    try:
        return len(kernel.peers(network_id))
    except Exception:
        return 0  # a broken network's namespace may be gone; status must still answer
