"""A device's offload features as `ethtool -k` shows them, read through pyroute2's ethtool
support inside a namespace (the beds inspect; ethtool the program need not be installed)."""

from __future__ import annotations

from pathlib import Path

from pyroute2 import Ethtool

from driver.kernel import nsfs

# The features that decide how much work a packet costs on our path.
WATCHED = (
    "rx-gro", "rx-gro-list", "rx-udp-gro-forwarding", "tx-generic-segmentation",
    "tx-tcp-segmentation", "tx-checksum-ip-generic", "rx-checksum", "tx-scatter-gather",
    "tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation", "tx-udp-segmentation",
)


def features(netns: Path, device: str) -> dict[str, bool]:
    """Every named feature of ``device`` in the namespace at ``netns``: on or off."""

    def read() -> dict[str, bool]:
        with Ethtool() as ethtool:
            found = ethtool.get_features(device).features
            return {name: bool(f.enable) for name, f in found.items() if name}

    return nsfs.run_in(netns, read)
