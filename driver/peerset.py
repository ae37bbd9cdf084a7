"""The remote peers programmed for one network, by endpoint, so a change to a few endpoints
costs work in proportion to those few, not to the network's size.

Kernel entries are keyed by the peer (IP, MAC, VTEP), records by endpoint ID; two records
may name the same peer for a while (an endpoint re-created under a new ID), so each peer
counts its endpoints and leaves the kernel with the last of them.
"""

from __future__ import annotations

from collections.abc import KeysView, Mapping

from driver.kernel.port import Peer


class PeerSet:
    def __init__(self, by_endpoint: Mapping[str, Peer] | None = None) -> None:
        self._by_endpoint: dict[str, Peer] = {}
        self._uses: dict[Peer, int] = {}
        for eid, peer in (by_endpoint or {}).items():
            self._set(eid, peer)

    def peers(self) -> KeysView[Peer]:
        """Every peer the kernel holds for the network (a live view)."""
        return self._uses.keys()

    def __len__(self) -> int:
        return len(self._uses)

    def apply(self, changes: Mapping[str, Peer | None]) -> tuple[set[Peer], set[Peer]]:
        """Take ``changes`` (endpoint ID -> its peer now, None when gone or local); returns
        (missing, stale): the peers the kernel must gain and lose. A peer that leaves and
        comes back within ``changes`` is in neither."""
        missing: set[Peer] = set()
        stale: set[Peer] = set()
        for eid, peer in changes.items():
            old = self._by_endpoint.get(eid)
            if old == peer:
                continue
            if old is not None:
                del self._by_endpoint[eid]
                if self._drop(old):
                    stale.add(old)
            if peer is not None and self._set(eid, peer):
                missing.add(peer)
        both = missing & stale
        return missing - both, stale - both

    def _set(self, eid: str, peer: Peer) -> bool:
        """For an endpoint not in the set: True when ``peer`` is new to the set."""
        self._by_endpoint[eid] = peer
        uses = self._uses.get(peer, 0)
        self._uses[peer] = uses + 1
        return uses == 0

    def _drop(self, peer: Peer) -> bool:
        """True when ``peer`` has no endpoint left."""
        left = self._uses[peer] - 1
        if left:
            self._uses[peer] = left
            return False
        del self._uses[peer]
        return True
