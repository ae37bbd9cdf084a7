"""Every kernel object name swarmnet creates comes from here.

Linux interface names hold at most 15 characters. Everything we own starts with
``sn`` so that reconciliation can find orphans by prefix without touching
anything that belongs to Docker or to the operator.
"""

from __future__ import annotations

import re

PREFIX = "sn"
IFNAMSIZ = 15

# Inside a network's own namespace the names are fixed: the namespace is ours.
BRIDGE = "br0"
VXLAN = "vxlan0"

# Endpoint IDs are 64 hex digits; swarm network IDs are 25 lower-case alphanumerics.
_OBJECT_ID = re.compile(r"[0-9a-zA-Z]{12,64}")
# Longest value quoted back in an error or a log line.
QUOTE_LIMIT = 80


def short(object_id: str) -> str:
    """The 12-character short ID used in logs and names (as ``docker ps`` shows)."""
    return object_id[:12]


def is_object_id(value: str) -> bool:
    # fullmatch: "$" would also accept a trailing newline.
    return _OBJECT_ID.fullmatch(value) is not None


def cut(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` for an error message or log line: its repr, at most ``limit`` characters.

    Whatever a client sends may be quoted back, so a 10 MB field must not
    become a 10 MB reply or log line.
    """
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def netns(network_id: str) -> str:
    """Name of the network namespace that holds a network's bridge and VXLAN device."""
    return f"{PREFIX}-{short(network_id)}"


def netns_network_prefix(name: str) -> str | None:
    """The short network ID a namespace name stands for, or None if it is not ours."""
    if name.startswith(PREFIX + "-") and len(name) == len(PREFIX) + 1 + 12:
        return name[len(PREFIX) + 1 :]
    return None


def vxlan_staging(vni: int) -> str:
    """Name of a VXLAN device while it is created in the host namespace, before the move."""
    name = f"{PREFIX}vx{vni}"
    assert len(name) <= IFNAMSIZ
    return name


def veth_host(endpoint_id: str) -> str:
    """The veth end handed to Docker (SrcName); Docker moves it into the container."""
    return f"{PREFIX}c{endpoint_id[:12]}"


def veth_bridge(endpoint_id: str) -> str:
    """The veth end that stays in the network namespace, enslaved to the bridge."""
    return f"{PREFIX}b{endpoint_id[:12]}"


def is_ours(ifname: str) -> bool:
    return ifname.startswith(PREFIX) and len(ifname) <= IFNAMSIZ
