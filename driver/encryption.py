"""Encrypted networks (``--opt encrypted``): IPsec ESP between every pair of nodes that share one.

How traffic is selected (docs/encryption-kernel.md, "Selecting encrypted VXLAN
traffic"): encrypted networks' VXLAN devices use their own UDP port
(``ENCRYPTED_VXLAN_PORT``, 4790), so xfrm policies on that port are all we need:

* per host, while it has an encrypted network: an *in* policy that accepts
  VXLAN on the port only through one of our SAs (plaintext is dropped), and an
  *out block* policy, so nothing to the port ever leaves in clear;
* per remote node that carries an encrypted network this node also has: an
  *out* policy pinned to the SPI of the generation in use, plus the SAs.

Keys and SPIs come from the shared store (``driver.ipsec_store``): every node
derives the same SAs for each ordered pair. Rotation needs no coordinator, only
what each node reports in its *ack* (``driver.ipsec_keys.Ack``):

1. a node installs inbound SAs for every live generation its peers may use,
   then reports ``inbound = newest``;
2. a node sends to peer P with the newest generation P reported inbound SAs
   for, and reports per peer which generation its out policy pins;
3. a node deletes its inbound SAs of generation g from P once P reports that
   it pins something newer, after a grace period for packets in flight.

So a receiver always has the SA a sender pins, and nothing is lost. Everything
is level-triggered: ``sync`` computes the whole wanted state from the store and
what this node's networks' peers are, diffs it against the kernel and fixes the
difference; it runs on every peer change and every ``poll_interval`` seconds.
The policies are built in ``driver.ipsec_policies``; the diff is ``driver.ipsec_sync``.

Errors raise and fail the call that caused them. Only the background poll,
which has no caller, logs them, and retries; the block policy keeps the
traffic of a peer it could not program off the wire meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping

from core.errors import BadRequest, Conflict, Internal, NotFound, Unsupported
from core.iptypes import IPAddress
from driver import names
from driver.config import EncryptionConfig
from driver.events import NO_EVENTS, DriverEvents
from driver.ipsec_store import IpsecStore, Rotation
from driver.ipsec_sync import XfrmSync
from driver.kernel.ipsec_port import Ipsec
from driver.kernel.xfrm.types import ProbeResult, XfrmUnsupported

log = logging.getLogger(__name__)


class Encryption:
    """The per-node IPsec state machine. Thread-safe; one lock around all xfrm work."""

    def __init__(
        self,
        ipsec: Ipsec,
        store: IpsecStore,
        local_vtep: Callable[[], IPAddress | None],
        settings: EncryptionConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ipsec = ipsec
        self.settings = settings or EncryptionConfig()
        self.store = store
        self._local_vtep = local_vtep
        self._clock = clock
        self._lock = threading.RLock()
        # Encrypted networks on this node -> VTEPs of the other nodes that carry them.
        self._networks: dict[str, set[IPAddress]] = {}
        self._xfrm = XfrmSync(ipsec, store, local_vtep, self.settings)
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._last_error = ""
        self.events: DriverEvents = NO_EVENTS  # metrics hook (driver/events.py)

    # -- fail closed -----------------------------------------------------------

    def capability(self) -> ProbeResult:
        """Whether this node can carry encrypted networks, and if not, why (cached probe)."""
        return self.ipsec.probe()

    def require_support(self, network_id: str) -> None:
        result = self.ipsec.probe()
        if not result.supported:
            raise Unsupported(
                f"network {names.short(network_id)}: --opt encrypted needs IPsec ESP with "
                f"AES-GCM in the kernel, and this host cannot do it: {result.detail}. "
                "Refusing the network rather than carry its traffic in clear"
            )

    def ensure_keys(self) -> int:
        """Make sure a key ring exists; returns its newest generation."""
        return self.store.ensure_keyring().newest.number

    # -- networks and peers -------------------------------------------------------

    def attach(self, network_id: str) -> None:
        """An encrypted network is being created here: the host policies go in first."""
        self.require_support(network_id)
        self.store.ensure_keyring()
        with self._lock:
            added = network_id not in self._networks
            self._networks.setdefault(network_id, set())
            try:
                self._sync()
            except BaseException:
                if added:
                    self._networks.pop(network_id, None)
                    with contextlib.suppress(Exception):
                        self._sync()
                raise
        self._start_keeper()

    def detach(self, network_id: str) -> None:
        """The network's devices are gone: drop pairs no other network needs, then, with
        the last encrypted network, the host policies."""
        with self._lock:
            self._networks.pop(network_id, None)
            self._sync()
            me = self._local_vtep()
            if not self._networks and me is not None:
                self.store.delete_ack(str(me))

    def attached(self, network_id: str) -> bool:
        with self._lock:
            return network_id in self._networks

    def add_peers(self, network_id: str, vteps: set[IPAddress]) -> None:
        """Program pairs for new peers. Call BEFORE their FDB entries go in."""
        self._set_peers(network_id, vteps, grow_only=True)

    def set_peers(self, network_id: str, vteps: set[IPAddress]) -> None:
        """Drop pairs no longer shared. Call AFTER the departed peers' FDB entries are gone."""
        self._set_peers(network_id, vteps, grow_only=False)

    def _set_peers(self, network_id: str, vteps: set[IPAddress], *, grow_only: bool) -> None:
        with self._lock:
            current = self._networks.get(network_id)
            if current is None:
                raise Internal(
                    f"network {names.short(network_id)}: encryption is not set up on this node"
                )
            wanted = current | vteps if grow_only else set(vteps)
            if wanted == current:
                return
            self._networks[network_id] = wanted
            try:
                self._sync()
            except BaseException:
                self._networks[network_id] = current
                raise

    # -- rotation ------------------------------------------------------------------

    def rotate(self) -> Rotation:
        """A new generation now; nodes switch to it as they learn it from the store."""
        try:
            rotation = self.store.rotate(self.settings.rotation_min_gap)
        except Exception as e:
            # metrics hook; a refusal (the request's fault) is no failure
            if not isinstance(e, (BadRequest, NotFound, Conflict)):
                self.events.ipsec_failed("rotation")
            raise
        self.events.keys_rotated("request")  # metrics hook
        log.info(
            "ipsec: keys rotated on request: generation %d -> %d",
            rotation.previous,
            rotation.current,
        )
        with self._lock:
            if self._networks:
                self._sync()
        return rotation

    def tick(self) -> None:
        """One background round: rotate if the interval is up, then sync."""
        with self._lock:
            if not self._networks:
                return
        try:
            rotation = self.store.rotate_if_due(self.settings.rotation_interval)
        except Exception:
            self.events.ipsec_failed("rotation")  # metrics hook
            raise
        if rotation is not None:
            self.events.keys_rotated("interval")  # metrics hook
            log.info(
                "ipsec: keys rotated on the %ds interval: generation %d -> %d",
                int(self.settings.rotation_interval),
                rotation.previous,
                rotation.current,
            )
        with self._lock:
            self._sync()

    def _start_keeper(self) -> None:
        with self._lock:
            if self._keeper is not None or self.settings.poll_interval <= 0:
                return
            self._keeper = threading.Thread(target=self._keep, name="swarmnet-ipsec", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.settings.poll_interval):
            try:
                self.tick()
            except Exception as e:
                self.events.ipsec_failed("sync")  # metrics hook
                message = str(e)
                # Once per distinct failure: the poll retries every few seconds.
                if message != self._last_error:
                    log.error(
                        "ipsec: background sync failed (retrying every %gs; peers that could "
                        "not be programmed stay blocked): %s",
                        self.settings.poll_interval,
                        message,
                    )
                self._last_error = message
            else:
                if self._last_error:
                    log.info("ipsec: background sync works again")
                self._last_error = ""

    def close(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=10)

    # -- start-up ------------------------------------------------------------------

    def prepare_host(self, network_ids: set[str]) -> list[str]:
        """At start, before the encrypted networks' devices are re-ensured: host policies."""
        with self._lock:
            self._networks = {nid: set() for nid in network_ids}
            if not network_ids:
                return []
            return self._ensure_host()

    def reconcile(self, peers: Mapping[str, set[IPAddress]]) -> list[str]:
        """At start: install what the store and the networks' peers justify, remove the rest.

        ``peers`` seeds each encrypted network's peers (from its FDB) until the
        control plane's snapshots arrive. Host policies must work, or this raises:
        without them nothing would keep the networks' traffic from leaving in clear.
        Pair failures are logged and retried by the background poll.
        """
        with self._lock:
            self._networks = {nid: set(v) for nid, v in peers.items()}
            if not self._networks:
                try:
                    return self._sync()
                except XfrmUnsupported:
                    return []  # no xfrm at all here: nothing of ours can exist
            changes = self._ensure_host()
            try:
                changes += self._sync()
            except Exception as e:
                log.error("ipsec: start-up sync failed; retrying in the background: %s", e)
                changes.append(f"ipsec: programming peers failed, retrying: {e}")
        self._start_keeper()
        return changes

    # -- the diff --------------------------------------------------------------------

    def sync(self) -> list[str]:
        with self._lock:
            return self._sync()

    def _sync(self) -> list[str]:
        return self._xfrm.sync(self._networks, self._clock)

    def _ensure_host(self) -> list[str]:
        return self._xfrm.ensure_host(self._xfrm.our_policies())
