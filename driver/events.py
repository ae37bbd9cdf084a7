"""What the driver and the control plane tell an observer (metrics), through one port.

The driver calls these at the moments only it sees: a network's remote peers programmed,
IPsec keys rotated, a background IPsec round failed. The control plane calls the etcd
ones. Everything else an observer wants (counts of networks, endpoints, pools, SAs) it
reads at scrape time through the services' read methods, so the hooks stay few.

``NO_EVENTS`` is the default everywhere: observing is optional, costs nothing when off,
and an observer must never raise into the caller (``plugin/metrics`` catches its own).
Calls come from request threads, the control plane's threads and the IPsec keeper.
"""

from __future__ import annotations

from typing import Protocol

from core.iptypes import IPAddress
from driver.peers import PeerRecord, Snapshot


class DriverEvents(Protocol):
    def peers_programmed(
        self,
        network_id: str,
        snapshot: Snapshot,
        local_vtep: IPAddress | None,
        *,
        added: int,
        removed: int,
        recheck: bool,
    ) -> None:
        """The kernel now holds ``snapshot``'s remote peers (those not on ``local_vtep``):
        ``added`` and ``removed`` FDB+neighbour entry pairs were written for it. ``recheck``:
        the diff was against the kernel, so what it wrote repaired drift."""
        ...

    def keys_rotated(self, trigger: str) -> None:
        """This node made a new IPsec key generation; ``trigger`` is request or interval."""
        ...

    def ipsec_failed(self, what: str) -> None:
        """An IPsec step failed: ``rotation`` (a new generation could not be made) or
        ``sync`` (a background round of programming SAs and policies)."""
        ...


class ControlPlaneEvents(Protocol):
    def etcd_reachable(self, reachable: bool) -> None:
        """The control plane reached etcd (True) or lost it (False); repeats are allowed."""
        ...

    def watch_restarted(self) -> None:
        """The watch stream ended or failed; the control plane lists again."""
        ...

    def record_changed(self, network_id: str, endpoint_id: str, record: PeerRecord | None) -> None:
        """A watch event for a watched network arrived: ``record`` put, or None deleted."""
        ...


class NoEvents:
    """Observes nothing: the default."""

    def peers_programmed(
        self,
        network_id: str,
        snapshot: Snapshot,
        local_vtep: IPAddress | None,
        *,
        added: int,
        removed: int,
        recheck: bool,
    ) -> None:
        return None

    def keys_rotated(self, trigger: str) -> None:
        return None

    def ipsec_failed(self, what: str) -> None:
        return None

    def etcd_reachable(self, reachable: bool) -> None:
        return None

    def watch_restarted(self) -> None:
        return None

    def record_changed(self, network_id: str, endpoint_id: str, record: PeerRecord | None) -> None:
        return None


NO_EVENTS = NoEvents()
