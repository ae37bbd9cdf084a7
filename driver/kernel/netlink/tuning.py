"""Data-path settings of the devices and the namespace a network owns (``NetworkSpec.tuned``).

Kept because they measured better (docs/benchmarks.md, "Data path"); candidates that did
not (GRO on the veth pair, bigger GSO/GRO sizes) are not here.

- **No bridge netfilter in the network namespace.** The bridge-nf-call sysctls are per
  network namespace and start at 1 whenever br_netfilter is loaded (dockerd loads it), so
  every frame crossing our bridge went through the IPv4 and IPv6 netfilter hooks of a
  namespace that has no rules. Only our namespace is changed; the host's and the
  containers' stay as they are.
- **No outer UDP checksum on an IPv4 underlay** (``vxlan_udp_csum=0``). RFC 7348 says the
  VXLAN UDP checksum SHOULD be sent as zero and a zero checksum MUST be accepted, the inner
  frame keeps its own checksum, and IPv4 allows a zero UDP checksum, so nodes with and
  without it interoperate (tests/kernel checks one of each). The kernel's default (and
  Docker's overlay, as 20.10 makes it) computes one. IPv6 underlays are unchanged (a zero
  checksum there needs the receiver's consent).
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

from driver.kernel import nsfs, procsys

log = logging.getLogger(__name__)

BRIDGE_NF = tuple(
    f"net.bridge.bridge-nf-call-{family}" for family in ("iptables", "ip6tables", "arptables")
)


def vxlan_options(tuned: bool) -> dict[str, Any]:
    """Extra IFLA_VXLAN_* attributes for creating the device."""
    return {"vxlan_udp_csum": 0} if tuned else {}


def vxlan_tuned(data: Any) -> bool:
    """Whether a device's IFLA_INFO_DATA shows the tuned settings (the kernel always reports
    IFLA_VXLAN_UDP_CSUM, for IPv6 devices too)."""
    return not data.get_attr("IFLA_VXLAN_UDP_CSUM")


def bridge_netfilter_off(netns: Path, short: str) -> None:
    """Set the namespace's bridge-nf-call sysctls to 0. A no-op without br_netfilter.

    A /proc/sys we may not write (a plugin whose remount failed) costs only speed: it is
    logged, not raised.
    """

    def write() -> list[str]:
        refused = []
        for key in BRIDGE_NF:
            try:
                procsys.set_sysctl(key, "0")
            except FileNotFoundError:
                continue  # no br_netfilter in this kernel: nothing calls netfilter
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                refused.append(f"{key.rsplit('.', 1)[1]}: {exc.strerror}")
        return refused

    refused = nsfs.run_in(netns, write)
    if refused:
        log.warning(
            "network %s: bridge netfilter stays on in its namespace (%s); frames pay for "
            "netfilter hooks with no rules",
            short,
            "; ".join(refused),
        )
