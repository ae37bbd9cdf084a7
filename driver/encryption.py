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
from driver.ipsec_keys import ICV_BITS, REQID, Ack, KeyRing, derive_key, spi, spi_parts
from driver.ipsec_store import IpsecStore, Rotation
from driver.kernel.ipsec_port import Ipsec
from driver.kernel.xfrm.types import (
    IPPROTO_UDP,
    Action,
    AeadKey,
    Direction,
    Policy,
    PolicyId,
    ProbeResult,
    SAId,
    SecurityAssociation,
    Selector,
    Template,
    XfrmUnsupported,
)

log = logging.getLogger(__name__)

PEER_PRIORITY = 100  # lower wins: a peer's out policy beats the block policy
BLOCK_PRIORITY = 1000


class NoIpsec:
    """An Ipsec that cannot: every encrypted network is refused with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def probe(self) -> ProbeResult:
        return ProbeResult(False, (), self.reason)

    def ensure_sa(self, sa: SecurityAssociation) -> bool:
        raise Unsupported(self.reason)

    def delete_sa(self, sa_id: SAId) -> bool:
        return False

    def list_sas(self) -> list[SecurityAssociation]:
        return []

    def update_policy(self, policy: Policy) -> None:
        raise Unsupported(self.reason)

    def delete_policy(self, pid: PolicyId) -> bool:
        return False

    def list_policies(self) -> list[Policy]:
        return []


# -- the objects we own --------------------------------------------------------


def in_policy(port: int) -> Policy:
    """VXLAN to ``port`` is accepted only if it came through one of our SAs."""
    return Policy(
        Selector.any(4, dport=port), Direction.IN, PEER_PRIORITY, templates=(Template(REQID),)
    )


def block_policy(port: int) -> Policy:
    """VXLAN to ``port`` with no peer policy is dropped, never sent in clear."""
    return Policy(Selector.any(4, dport=port), Direction.OUT, BLOCK_PRIORITY, Action.BLOCK)


def out_policy(me: IPAddress, peer: IPAddress, spi_value: int, port: int) -> Policy:
    """me -> peer VXLAN on ``port`` leaves as ESP through exactly the SA ``spi_value``."""
    return Policy(
        Selector.hosts(me, peer, dport=port),
        Direction.OUT,
        PEER_PRIORITY,
        templates=(Template(REQID, me, peer, spi=spi_value),),
    )


def is_ours(policy: Policy) -> bool:
    """Policies with our reqid, and block policies shaped like ours (on any port)."""
    if any(t.reqid == REQID for t in policy.templates):
        return True
    sel = policy.selector
    return (
        policy.action == Action.BLOCK
        and policy.direction == Direction.OUT
        and policy.priority == BLOCK_PRIORITY
        and not policy.templates
        and sel.proto == IPPROTO_UDP
        and sel.dport != 0
        and sel.src.prefixlen == 0
        and sel.dst.prefixlen == 0
    )


def _is_peer_policy(policy: Policy) -> bool:
    return policy.direction == Direction.OUT and bool(policy.templates)


SAKey = tuple[IPAddress, int]  # (dst, SPI): how the kernel finds an ESP SA


def _key(sa: SecurityAssociation) -> SAKey:
    return sa.dst, sa.spi


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
        self._retiring: dict[SAKey, float] = {}  # inbound SA -> when it stopped being needed
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
            return self._ensure_host(self._our_policies())

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
            changes = self._ensure_host(self._our_policies())
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

    def _our_policies(self) -> list[Policy]:
        return [p for p in self.ipsec.list_policies() if is_ours(p)]

    def _ensure_host(self, policies: list[Policy]) -> list[str]:
        have = {p.id: p for p in policies}
        changes = []
        for wanted in (block_policy(self.settings.port), in_policy(self.settings.port)):
            if have.get(wanted.id) != wanted:
                self.ipsec.update_policy(wanted)
                changes.append(f"ipsec: installed {wanted}")
        return changes

    def _sa(
        self, src: IPAddress, dst: IPAddress, ring: KeyRing, number: int, index: Mapping[str, int]
    ) -> SecurityAssociation:
        generation = ring.get(number)
        assert generation is not None
        value = spi(number, index[str(src)], index[str(dst)])
        key = derive_key(generation.master, src, dst, value)
        return SecurityAssociation(src, dst, value, REQID, AeadKey(key, ICV_BITS))

    def _install(self, sa: SecurityAssociation, have: Mapping[SAKey, SecurityAssociation]) -> bool:
        current = have.get(_key(sa))
        if current == sa:
            return False
        if current is not None:
            # Ours, but with another key (the key ring was replaced): replace it.
            log.warning("ipsec: replacing %s, whose key is not the store's", current.id)
            self.ipsec.delete_sa(current.id)
        self.ipsec.ensure_sa(sa)
        return True

    def _sync(self) -> list[str]:
        port = self.settings.port
        sas = [sa for sa in self.ipsec.list_sas() if sa.reqid == REQID]
        policies = self._our_policies()
        changes: list[str] = []
        if not self._networks:
            return self._teardown(sas, policies)

        changes += self._ensure_host(policies)
        me = self._local_vtep()
        peers = set().union(*self._networks.values()) - ({me} if me else set())
        have = {_key(sa): sa for sa in sas}
        wanted: dict[SAKey, SecurityAssociation] = {}
        wanted_policies = {block_policy(port).id, in_policy(port).id}
        if peers:
            if me is None:
                raise Internal(
                    "this node's data-path address is not known yet, so its encrypted "
                    "peers cannot be programmed"
                )
            if me.version != 4 or any(p.version != 4 for p in peers):
                raise Unsupported("encrypted networks need an IPv4 underlay (VTEP addresses)")
            ring = self.store.ensure_keyring()
            index = self.store.indexes({str(v) for v in peers | {me}})
            acks = self.store.acks()
            mine = acks.get(str(me))
            inbound = self._inbound(me, peers, ring, index, acks, mine, sas)
            for sa in inbound.values():
                self._install(sa, have)
            wanted.update(inbound)

            outbound: dict[str, int] = {}
            for peer in sorted(peers, key=str):
                theirs = acks.get(str(peer))
                number = ring.chosen(theirs.inbound if theirs else None)
                sa = self._sa(me, peer, ring, number, index)
                self._install(sa, have)
                wanted[_key(sa)] = sa
                policy = out_policy(me, peer, sa.spi, port)
                wanted_policies.add(policy.id)
                current = next((p for p in policies if p.id == policy.id), None)
                if current != policy:
                    # UPDPOLICY swaps in one step: the next packet uses the new SA.
                    self.ipsec.update_policy(policy)
                    changes.append(
                        f"ipsec: peer {peer}: sending with generation {number} (SPI {sa.spi:#010x})"
                    )
                outbound[str(peer)] = number
            ack = Ack(inbound=ring.newest.number, outbound=outbound)
            if not ack.same(mine):
                self.store.put_ack(str(me), ack)

        # Removal: peer policies first (their traffic then meets the block policy),
        # then SAs, then host policies of ours that are not wanted (another port).
        stale = [p for p in policies if p.id not in wanted_policies]
        for policy in sorted(stale, key=lambda p: not _is_peer_policy(p)):
            if self.ipsec.delete_policy(policy.id):
                changes.append(f"ipsec: removed {policy}")
        for sa in sas:
            if _key(sa) not in wanted and self.ipsec.delete_sa(sa.id):
                changes.append(f"ipsec: removed {sa}")
        for line in changes:
            log.info("%s", line)
        return changes

    def _inbound(
        self,
        me: IPAddress,
        peers: set[IPAddress],
        ring: KeyRing,
        index: Mapping[str, int],
        acks: Mapping[str, Ack],
        mine: Ack | None,
        sas: list[SecurityAssociation],
    ) -> dict[SAKey, SecurityAssociation]:
        """Inbound SAs to have: every generation a peer may send with, plus recent leftovers."""
        wanted: dict[SAKey, SecurityAssociation] = {}
        # What a peer picks for us from our own last report; what it says it pins.
        lowest = ring.chosen(mine.inbound if mine else None)
        for peer in peers:
            theirs = acks.get(str(peer))
            pinned = theirs.outbound.get(str(me)) if theirs else None
            low = lowest if pinned is None else min(lowest, pinned)
            for generation in ring.generations:
                if generation.number >= low:
                    sa = self._sa(peer, me, ring, generation.number, index)
                    wanted[_key(sa)] = sa
        now = self._clock()
        retiring: dict[SAKey, float] = {}
        for sa in sas:
            key = _key(sa)
            if sa.dst != me or sa.src not in peers or key in wanted:
                continue
            byte, src_index, dst_index = spi_parts(sa.spi)
            live = ring.by_spi_byte(byte)
            if (
                live is None
                or src_index != index[str(sa.src)]
                or dst_index != index[str(me)]
                or self._sa(sa.src, me, ring, live.number, index) != sa
            ):
                continue
            since = self._retiring.get(key, now)
            if now - since < self.settings.prune_grace:
                retiring[key] = since
                wanted[key] = sa  # still there, still kept: packets sealed with it may be in flight
        self._retiring = retiring
        return wanted

    def _teardown(self, sas: list[SecurityAssociation], policies: list[Policy]) -> list[str]:
        """No encrypted network left here: nothing of ours stays."""
        changes = []
        for policy in sorted(policies, key=lambda p: not _is_peer_policy(p)):
            if self.ipsec.delete_policy(policy.id):
                changes.append(f"ipsec: removed {policy}")
        for sa in sas:
            if self.ipsec.delete_sa(sa.id):
                changes.append(f"ipsec: removed {sa}")
        self._retiring.clear()
        for line in changes:
            log.info("%s", line)
        return changes
