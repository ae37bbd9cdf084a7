"""The driver's own settings, parsed once by ``plugin.settings``."""

from __future__ import annotations

from dataclasses import dataclass

from driver.kernel.port import IPAddress

# Docker's overlay driver hands out VNIs from 4096 up; staying below keeps both
# drivers usable on the same hosts without colliding in the kernel.
DEFAULT_VNI_RANGE = (256, 4095)
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


@dataclass(frozen=True)
class DriverConfig:
    scope: str = "global"  # "global" for swarm, "local" for standalone dockerd
    vxlan_port: int = 4789
    vni_range: tuple[int, int] = DEFAULT_VNI_RANGE
    mtu: int | None = None  # the underlay MTU to assume; None = read it from the kernel
    data_path_addr: IPAddress | None = None  # overrides DiscoverNew's Self address
