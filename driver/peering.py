"""Peer programming: this node's endpoints out to the control plane, everyone else's in.

Snapshots of a network's endpoints come from the control plane (``driver.peers``);
each is diffed against what was last programmed for that network, under the
network's lock, and only the difference reaches the kernel. Between snapshots the
control plane hands over only what changed (``on_changes``): applying that costs
work in proportion to the change, not to the network's size (``driver.peerset``).
"""

from __future__ import annotations

import logging
from collections.abc import Container, Mapping
from dataclasses import dataclass

from driver import names
from driver.encryption import Encryption
from driver.events import NO_EVENTS, DriverEvents
from driver.kernel.port import Kernel
from driver.keylocks import KeyedLocks
from driver.local_state import LocalState
from driver.peers import ControlPlane, PeerRecord, Snapshot, converge
from driver.peerset import PeerSet
from driver.records import EndpointRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Programmed:
    """What the last successful programming of a network left in the kernel.

    ``encrypted`` is the network record's, read by that snapshot: a delivery of changes
    needs only it, and decoding the record for every delivery was a large part of the
    control plane's cost at scale (issue 16). It cannot outlive the record: a network is
    created and deleted under its lock, with a ``forget`` that drops this entry.
    """

    peerset: PeerSet
    encrypted: bool


class Peering:
    def __init__(
        self,
        kernel: Kernel,
        state: LocalState,
        control: ControlPlane,
        encryption: Encryption,
        locks: KeyedLocks,
        broken: Container[str],
    ) -> None:
        self.kernel = kernel
        self.state = state
        self.control = control
        self.encryption = encryption
        self._locks = locks
        self._broken = broken  # networks with no kernel state to program
        self.events: DriverEvents = NO_EVENTS  # metrics hook (driver/events.py)
        # Per network, under its lock: the remote peers last programmed, by endpoint.
        self._programmed: dict[str, _Programmed] = {}

    # -- ours, out -----------------------------------------------------------------

    def publish(self, ep: EndpointRecord) -> None:
        """Queue the endpoint's record; the control plane's thread sends it."""
        vtep = self.state.vtep()
        iface = ep.address or ep.address_v6
        if vtep is None or iface is None:
            log.warning(
                "endpoint %s: not published: this node's data-path address is not known yet",
                names.short(ep.endpoint_id),
            )
            return
        self.control.publish(
            PeerRecord(
                network_id=ep.network_id,
                endpoint_id=ep.endpoint_id,
                ip=iface.ip,
                mac=ep.mac,
                vtep=vtep,
            )
        )

    def withdraw(self, network_id: str, endpoint_id: str) -> None:
        self.control.withdraw(network_id, endpoint_id)

    def node_facts(self) -> Mapping[str, object]:
        """This node's record: whether its kernel can do ESP, and if not, what is missing."""
        esp = self.encryption.capability()
        vtep = self.state.vtep()
        return {
            "vtep": str(vtep) if vtep else "",
            "esp": esp.supported,
            "esp_detail": "" if esp.supported else esp.detail,
        }

    def announce(self) -> None:
        self.control.announce(self.node_facts())

    # -- theirs, in ----------------------------------------------------------------

    def forget(self, network_id: str) -> None:
        """Under the network's lock: the next snapshot diffs against the kernel."""
        self._programmed.pop(network_id, None)

    def on_snapshot(self, network_id: str, snapshot: Snapshot, *, recheck: bool = False) -> None:
        local = self.state.vtep()
        by_endpoint = {eid: r.peer() for eid, r in snapshot.items() if r.vtep != local}
        want = frozenset(by_endpoint.values())
        with self._locks.hold(network_id):
            net = self.state.network(network_id)
            # Most snapshots change nothing here (events about our own endpoints) or
            # one peer: diff against what we last programmed instead of dumping the
            # FDB and neighbour table every time. The control plane's periodic
            # recheck compares with the kernel, so drift cannot last.
            known = self._programmed.pop(network_id, None)
            have = None if recheck or known is None else known.peerset.peers()
            if net is None or network_id in self._broken:
                # A broken network has no device to program; the periodic recheck
                # after its rebuild diffs against the kernel.
                return
            if have is not None and have == want:
                self._programmed[network_id] = _Programmed(PeerSet(by_endpoint), net.encrypted)
                self.events.peers_programmed(  # metrics hook
                    network_id, snapshot, local, added=0, removed=0, recheck=recheck
                )
                return
            if not net.encrypted:
                added, removed = converge(self.kernel, network_id, want, have)
            else:
                # SAs and policies for a new peer before its FDB entries (if this raises,
                # no entry is made: fail closed); a departed peer's pair after its entries.
                vteps = {p.vtep for p in want}
                self.encryption.add_peers(network_id, vteps)
                added, removed = converge(self.kernel, network_id, want, have)
                self.encryption.set_peers(network_id, vteps)
            # Only after success: after a failure the next snapshot diffs with the kernel.
            self._programmed[network_id] = _Programmed(PeerSet(by_endpoint), net.encrypted)
            self.events.peers_programmed(  # metrics hook
                network_id, snapshot, local, added=added, removed=removed, recheck=recheck
            )

    def on_changes(self, network_id: str, changes: Mapping[str, PeerRecord | None]) -> bool:
        """Program only what changed (endpoint ID -> its record now, None when gone).

        False when there is nothing to apply the changes to: nothing programmed since a
        failure, a ``forget`` or the start, a broken network, or an encrypted one (its SAs
        follow the whole set of VTEPs); the control plane then hands over a snapshot.
        """
        local = self.state.vtep()
        peers = {
            eid: r.peer() if r is not None and r.vtep != local else None
            for eid, r in changes.items()
        }
        with self._locks.hold(network_id):
            programmed = self._programmed.get(network_id)
            if programmed is None or programmed.encrypted or network_id in self._broken:
                return False
            known = programmed.peerset
            missing, stale = known.apply(peers)
            if missing or stale:
                # Until it succeeded: after a failure the next delivery diffs with the kernel.
                del self._programmed[network_id]
                for peer in stale:
                    self.kernel.remove_peer(network_id, peer)
                for peer in missing:
                    self.kernel.ensure_peer(network_id, peer)
                self._programmed[network_id] = programmed
                log.info(
                    "network %s: peers +%d -%d (now %d)",
                    names.short(network_id), len(missing), len(stale), len(known),
                )  # fmt: skip
            puts = {eid: r for eid, r in changes.items() if r is not None}
            self.events.peers_programmed(  # metrics hook
                network_id, puts, local, added=len(missing), removed=len(stale), recheck=False
            )
            return True
