"""The diff behind ``driver.encryption``: the SAs and policies that the store and the
networks' peers justify, made so in the kernel, and nothing else of ours left.

The rotation rules it applies (which generations to receive with, which to send
with, when an inbound SA may go) are set out in ``driver.encryption``'s docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from core.errors import Internal, Unsupported
from core.iptypes import IPAddress
from driver.config import EncryptionConfig
from driver.ipsec_keys import ICV_BITS, REQID, Ack, KeyRing, derive_key, spi, spi_parts
from driver.ipsec_policies import (
    SAKey,
    block_policy,
    in_policy,
    is_ours,
    is_peer_policy,
    out_policy,
    sa_key,
)
from driver.ipsec_store import IpsecStore
from driver.kernel.ipsec_port import Ipsec
from driver.kernel.xfrm.types import AeadKey, Policy, SecurityAssociation

log = logging.getLogger(__name__)


class XfrmSync:
    """One node's xfrm state, level-triggered. Not thread-safe: ``Encryption`` holds
    its lock around every call."""

    def __init__(
        self,
        ipsec: Ipsec,
        store: IpsecStore,
        local_vtep: Callable[[], IPAddress | None],
        settings: EncryptionConfig,
    ) -> None:
        self.ipsec = ipsec
        self.store = store
        self.settings = settings
        self._local_vtep = local_vtep
        self._retiring: dict[SAKey, float] = {}  # inbound SA -> when it stopped being needed

    def our_policies(self) -> list[Policy]:
        return [p for p in self.ipsec.list_policies() if is_ours(p)]

    def ensure_host(self, policies: list[Policy]) -> list[str]:
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
        current = have.get(sa_key(sa))
        if current == sa:
            return False
        if current is not None:
            # Ours, but with another key (the key ring was replaced): replace it.
            log.warning("ipsec: replacing %s, whose key is not the store's", current.id)
            self.ipsec.delete_sa(current.id)
        self.ipsec.ensure_sa(sa)
        return True

    def sync(self, networks: Mapping[str, set[IPAddress]], clock: Callable[[], float]) -> list[str]:
        """``networks``: the encrypted networks here -> the VTEPs of the other nodes
        that carry them. ``clock`` times the grace of retiring inbound SAs."""
        port = self.settings.port
        sas = [sa for sa in self.ipsec.list_sas() if sa.reqid == REQID]
        policies = self.our_policies()
        changes: list[str] = []
        if not networks:
            return self._teardown(sas, policies)

        changes += self.ensure_host(policies)
        me = self._local_vtep()
        peers = set().union(*networks.values()) - ({me} if me else set())
        have = {sa_key(sa): sa for sa in sas}
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
            inbound = self._inbound(me, peers, ring, index, acks, mine, sas, clock())
            for sa in inbound.values():
                self._install(sa, have)
            wanted.update(inbound)

            outbound: dict[str, int] = {}
            for peer in sorted(peers, key=str):
                theirs = acks.get(str(peer))
                number = ring.chosen(theirs.inbound if theirs else None)
                sa = self._sa(me, peer, ring, number, index)
                self._install(sa, have)
                wanted[sa_key(sa)] = sa
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
        for policy in sorted(stale, key=lambda p: not is_peer_policy(p)):
            if self.ipsec.delete_policy(policy.id):
                changes.append(f"ipsec: removed {policy}")
        for sa in sas:
            if sa_key(sa) not in wanted and self.ipsec.delete_sa(sa.id):
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
        now: float,
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
                    wanted[sa_key(sa)] = sa
        retiring: dict[SAKey, float] = {}
        for sa in sas:
            key = sa_key(sa)
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
        for policy in sorted(policies, key=lambda p: not is_peer_policy(p)):
            if self.ipsec.delete_policy(policy.id):
                changes.append(f"ipsec: removed {policy}")
        for sa in sas:
            if self.ipsec.delete_sa(sa.id):
                changes.append(f"ipsec: removed {sa}")
        self._retiring.clear()
        for line in changes:
            log.info("%s", line)
        return changes
