"""Remote endpoints: publishing ours, and programming everyone else's.

A remote driver gets none of Docker's gossip, so endpoints are published in a
shared store (etcd) and every node watches the networks it has. The ControlPlane
port hands the driver *level-triggered* snapshots: the full set of endpoints of
a network as the store says now. The driver then diffs that against what the
kernel holds and adds what is missing and removes what is stale. Late,
duplicated or reordered watch events therefore cannot leave a wrong entry
behind: the next snapshot corrects it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, Protocol

from core.iptypes import IPAddress
from driver import names
from driver.kernel.port import Kernel, Peer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)  # as many as Peer (driver.kernel.port)
class PeerRecord:
    """One endpoint as the rest of the swarm sees it."""

    network_id: str
    endpoint_id: str
    ip: IPAddress
    mac: str
    vtep: IPAddress

    def peer(self) -> Peer:
        return Peer(ip=self.ip, mac=self.mac, vtep=self.vtep)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "network_id": self.network_id,
                "endpoint_id": self.endpoint_id,
                "ip": str(self.ip),
                "mac": self.mac,
                "vtep": str(self.vtep),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PeerRecord:
        d: dict[str, Any] = json.loads(raw)
        return cls(
            network_id=d["network_id"],
            endpoint_id=d["endpoint_id"],
            ip=ipaddress.ip_address(d["ip"]),
            mac=d["mac"],
            vtep=ipaddress.ip_address(d["vtep"]),
        )


Snapshot = Mapping[str, PeerRecord]  # endpoint ID -> record, every node's endpoints


class OnSnapshot(Protocol):
    def __call__(self, network_id: str, snapshot: Snapshot, *, recheck: bool = False) -> None:
        """Program the network's remote peers to match ``snapshot``.

        ``recheck`` asks for a comparison with what the kernel holds, not with
        what was last programmed: the control plane sets it on its periodic
        resync and after every (re)listing, so drift is bounded.
        """
        ...


class OnChanges(Protocol):
    def __call__(self, network_id: str, changes: Mapping[str, PeerRecord | None]) -> bool:
        """Program only these endpoints' changes (endpoint ID -> record, None: gone).

        False when the driver has nothing to apply them to: the control plane then hands
        over a snapshot of the network instead.
        """
        ...


class ControlPlane(Protocol):
    def start(self, on_snapshot: OnSnapshot, on_changes: OnChanges | None = None) -> None:
        """Begin delivering snapshots for watched networks to ``on_snapshot``, and (if
        given) what changed between them to ``on_changes``."""
        ...

    def watch(self, network_id: str) -> None:
        """Deliver snapshots of this network (the first one soon, then on every change)."""
        ...

    def unwatch(self, network_id: str) -> None: ...

    def publish(self, record: PeerRecord) -> None:
        """Make this endpoint known to every node, bound to this node's liveness.

        If the store is unreachable the record is kept and published when it
        is back; this never raises for an outage.
        """
        ...

    def withdraw(self, network_id: str, endpoint_id: str) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> str:
        """One line for status output: which store, and whether it is reachable."""
        ...

    def announce(self, info: Mapping[str, object]) -> None:
        """Facts about this node for its node record, e.g. whether it can do ESP."""
        ...

    def nodes(self) -> dict[str, Mapping[str, object]]:
        """Every live node's record by node name; {} with no shared store or when it is
        unreachable (status output only, never a decision)."""
        ...


class LocalControlPlane:
    """One host, no shared store: there are no remote endpoints to learn."""

    def start(self, on_snapshot: OnSnapshot, on_changes: OnChanges | None = None) -> None:
        return None

    def watch(self, network_id: str) -> None:
        return None

    def unwatch(self, network_id: str) -> None:
        return None

    def publish(self, record: PeerRecord) -> None:
        return None

    def withdraw(self, network_id: str, endpoint_id: str) -> None:
        return None

    def close(self) -> None:
        return None

    def describe(self) -> str:
        return "local (single host, no shared store)"

    def announce(self, info: Mapping[str, object]) -> None:
        return None

    def nodes(self) -> dict[str, Mapping[str, object]]:
        return {}


def converge(
    kernel: Kernel, network_id: str, want: Set[Peer], have: Set[Peer] | None = None
) -> tuple[int, int]:
    """Make the network's FDB and neighbour entries equal ``want``, the remote peers.

    ``have`` is what the caller knows the kernel holds; None reads it from the
    kernel. Returns (added, removed). The caller holds the network's lock.
    """
    if have is None:
        have = kernel.peers(network_id)
    stale = have - want
    missing = want - have
    for peer in stale:
        kernel.remove_peer(network_id, peer)
    for peer in missing:
        kernel.ensure_peer(network_id, peer)
    if stale or missing:
        log.info(
            "network %s: peers +%d -%d (now %d)",
            names.short(network_id),
            len(missing),
            len(stale),
            len(want),
        )
    return len(missing), len(stale)
