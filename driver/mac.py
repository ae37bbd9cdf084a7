"""MAC addresses derived from IP addresses, as Docker's drivers derive them."""

from __future__ import annotations

import ipaddress
import re

from driver import names

_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def from_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """``02:42`` followed by the four bytes of the IPv4 address (the last four of an IPv6 one).

    0x02 marks a locally administered unicast address. Docker uses the same
    scheme, so an address keeps its MAC across hosts and restarts, and the MAC
    alone tells an operator which container it belongs to.
    """
    tail = ip.packed[-4:]
    return ":".join(f"{b:02x}" for b in (0x02, 0x42, *tail))


def normalise(value: str) -> str:
    """Lower-case, colon-separated form; raises ValueError on anything that is not a unicast MAC."""
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"{names.cut(value)} is not a MAC address")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{names.cut(value)} is a multicast MAC address")
    return mac
