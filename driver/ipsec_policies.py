"""The xfrm policies the encryption use case owns, and how to know ours from others'.

Traffic is selected by the encrypted VXLAN port alone (``driver.encryption``):
per host an *in* policy and an *out block* policy on the port, per peer an *out*
policy pinned to one SA. Shared by the use case and the tests that check the
kernel keeps exactly these.
"""

from __future__ import annotations

from core.iptypes import IPAddress
from driver.ipsec_keys import REQID
from driver.kernel.xfrm.types import (
    IPPROTO_UDP,
    Action,
    Direction,
    Policy,
    SecurityAssociation,
    Selector,
    Template,
)

PEER_PRIORITY = 100  # lower wins: a peer's out policy beats the block policy
BLOCK_PRIORITY = 1000


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


def is_peer_policy(policy: Policy) -> bool:
    return policy.direction == Direction.OUT and bool(policy.templates)


SAKey = tuple[IPAddress, int]  # (dst, SPI): how the kernel finds an ESP SA


def sa_key(sa: SecurityAssociation) -> SAKey:
    return sa.dst, sa.spi
