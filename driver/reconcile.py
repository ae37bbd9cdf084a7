"""Start-up: make the kernel match the store, and keep retrying networks that would not come up.

At start the kernel is rebuilt from the local store: networks get their
namespace, bridge and VXLAN device re-ensured; what carries our name prefix and
the store does not know is removed; endpoints whose veth went away are not
published. A network that cannot be rebuilt is marked broken and retried in the
background (and on the next call for it), so the others come up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from core.errors import Unavailable
from core.iptypes import IPAddress
from driver import names
from driver.config import DriverConfig
from driver.encryption import Encryption
from driver.kernel.port import Kernel
from driver.keylocks import KeyedLocks
from driver.local_state import LocalState
from driver.peering import Peering
from driver.records import NetworkRecord
from driver.vni import VniAllocator

log = logging.getLogger(__name__)

# How often a network that could not be rebuilt at start is tried again.
RETRY_INTERVAL = 30.0


class NetworkBroken(Unavailable):
    """The network is in the store but its kernel state could not be made."""


def reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "..."


class BrokenNetworks:
    """Networks that could not be rebuilt: network ID -> why. Shown by status."""

    def __init__(
        self,
        config: DriverConfig,
        kernel: Kernel,
        state: LocalState,
        locks: KeyedLocks,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.state = state
        self._locks = locks
        self._why: dict[str, str] = {}
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None
        self.retry_interval = RETRY_INTERVAL

    def __contains__(self, network_id: object) -> bool:
        return network_id in self._why

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._why))

    def __bool__(self) -> bool:
        return bool(self._why)

    def why(self, network_id: str) -> str:
        return self._why.get(network_id, "")

    def view(self) -> Mapping[str, str]:
        return MappingProxyType(dict(self._why))

    def mark(self, network_id: str, why: str) -> None:
        self._why[network_id] = why

    def discard(self, network_id: str) -> None:
        self._why.pop(network_id, None)

    def rebuild_if_broken(self, net: NetworkRecord) -> None:
        """Under the network's lock: one more try for a network that failed at start."""
        if net.network_id not in self._why:
            return
        try:
            self.kernel.ensure_network(self.state.spec(net))
        except Exception as e:
            self._why[net.network_id] = reason(e)
            raise NetworkBroken(
                f"network {names.short(net.network_id)} could not be rebuilt on this node: "
                f"{reason(e)}"
            ) from None
        # Nothing was programmed while it was broken (Peering skips broken networks),
        # so the next snapshot diffs against the kernel.
        del self._why[net.network_id]
        log.info("network %s: rebuilt", names.short(net.network_id))

    def retry(self) -> list[str]:
        """Try every broken network again. Returns a line per network rebuilt."""
        fixed = []
        for network_id in list(self._why):
            with self._locks.hold(network_id):
                net = self.state.network(network_id)
                if net is None:
                    self._why.pop(network_id, None)
                    continue
                try:
                    self.rebuild_if_broken(net)
                except NetworkBroken:
                    continue
            fixed.append(f"network {names.short(network_id)}: rebuilt")
        return fixed

    def start_retrier(self) -> None:
        def run() -> None:
            while self._why and not self._stop.wait(self.retry_interval):
                self.retry()

        self._retrier = threading.Thread(target=run, name="swarmnet-rebuild", daemon=True)
        self._retrier.start()

    def close(self) -> None:
        self._stop.set()
        if self._retrier is not None:
            self._retrier.join(timeout=10)


class Reconciler:
    def __init__(
        self,
        config: DriverConfig,
        kernel: Kernel,
        state: LocalState,
        encryption: Encryption,
        peering: Peering,
        vnis: VniAllocator,
        locks: KeyedLocks,
        broken: BrokenNetworks,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.state = state
        self.encryption = encryption
        self.peering = peering
        self.vnis = vnis
        self._locks = locks
        self.broken = broken

    def reconcile(self) -> list[str]:
        """Make the kernel match the store; remove what we own that the store does not know.

        Returns a line per change, which the caller logs.
        """
        changes: list[str] = []
        nets = {names.short(net.network_id): net for net in self.state.networks()}
        present = self.kernel.network_ids()
        encrypted = {n.network_id for n in nets.values() if n.encrypted}
        # Block and in policies before any encrypted network's VXLAN device is (re)made.
        changes += self.encryption.prepare_host(encrypted)
        changes += self._rebuild(nets, present)
        for short_id in sorted(present - set(nets)):
            # network_ids() gives short IDs; remove_network only needs the prefix.
            self.kernel.remove_network(short_id)
            changes.append(f"network {short_id}: removed orphan namespace")
        alive, endpoint_changes = self._sweep_endpoints(nets.values())
        changes += endpoint_changes
        # Until the control plane's snapshots come, a network's peers are its FDB's VTEPs.
        seeds = {nid: self._peer_vteps(nid) for nid in sorted(encrypted)}
        changes += self.encryption.reconcile(seeds)
        self.peering.announce()
        self.peering.control.start(self.peering.on_snapshot, self.peering.on_changes)
        for net in nets.values():
            self.peering.control.watch(net.network_id)
        changes += self._sweep_vnis(nets.values())
        if self.broken:
            self.broken.start_retrier()
        for ep in self.state.joined_endpoints():
            if ep.endpoint_id in alive:
                self.peering.publish(ep)
                continue
            # Its veth went with its container (a reboot, or the container died while
            # dockerd was down). dockerd sends no Leave for it then, so never advertise
            # it: other nodes would keep a stale entry for an address swarm may reuse.
            self.peering.withdraw(ep.network_id, ep.endpoint_id)
            changes.append(
                f"endpoint {names.short(ep.endpoint_id)}: not published, its veth is gone"
            )
        return changes

    def _rebuild(self, nets: Mapping[str, NetworkRecord], present: set[str]) -> list[str]:
        changes = []
        for short_id, net in nets.items():
            with self._locks.hold(net.network_id):
                try:
                    self.kernel.ensure_network(self.state.spec(net))
                except Exception as e:
                    # One network that cannot be rebuilt must not keep the others down.
                    self.broken.mark(net.network_id, reason(e))
                    log.error("network %s: could not be rebuilt, retrying every %.0f s: %s",
                              short_id, self.broken.retry_interval, reason(e))
                    changes.append(f"network {short_id}: broken, will retry ({reason(e)})")
                    continue
                if short_id not in present:
                    changes.append(f"network {short_id}: recreated its namespace (VNI {net.vni})")
        return changes

    def _sweep_endpoints(self, nets: Iterable[NetworkRecord]) -> tuple[set[str], list[str]]:
        """Remove veths no joined endpoint owns. Returns the joined endpoints still alive."""
        changes = []
        joined: set[str] = set()
        alive: set[str] = set()  # joined endpoints whose veth is still in their network
        for net in nets:
            eps = self.state.endpoints(net.network_id)
            stored = {names.short(ep.endpoint_id): ep for ep in eps}
            joined |= {k for k, ep in stored.items() if ep.joined}
            try:
                veths = self.kernel.endpoint_ids(net.network_id)
            except Exception as e:
                log.error("network %s: cannot list its endpoints: %s",
                          names.short(net.network_id), reason(e))
                continue
            alive |= {ep.endpoint_id for k, ep in stored.items() if ep.joined and k in veths}
            for short_eid in sorted(veths):
                ep = stored.get(short_eid)
                if ep is None or not ep.joined:
                    self.kernel.remove_endpoint(net.network_id, short_eid)
                    changes.append(
                        f"endpoint {short_eid}: removed orphan veth from network "
                        f"{names.short(net.network_id)}"
                    )
        for link in self.kernel.remove_orphan_links(joined):
            changes.append(f"link {link}: removed orphan")
        return alive, changes

    def _peer_vteps(self, network_id: str) -> set[IPAddress]:
        try:
            return {p.vtep for p in self.kernel.peers(network_id)}
        except Exception:
            return set()  # a broken network: its peers come with the control plane's snapshot

    def _sweep_vnis(self, nets: Iterable[NetworkRecord]) -> list[str]:
        """Release VNIs held for networks this host has no record of (local scope, one host).

        A crash between allocating a VNI and writing the network record leaves
        the VNI held by a network Docker was told failed; no DeleteNetwork comes.
        Only where the VNI table is this host's own: across hosts, another host's
        networks are not in our store.
        """
        if self.config.scope != "local" or self.vnis.store is not self.state.kv:
            return []
        known = {n.network_id for n in nets}
        out = []
        for network_id in self.vnis.owners():
            if network_id not in known:
                vni = self.vnis.release(network_id)
                if vni is not None:
                    out.append(f"network {names.short(network_id)}: released orphan VNI {vni}")
        return out
