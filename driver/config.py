"""The driver's own settings, parsed once by ``plugin.settings``."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.iptypes import IPAddress

# Docker's overlay driver hands out VNIs from 4096 up; staying below keeps both
# drivers usable on the same hosts without colliding in the kernel.
DEFAULT_VNI_RANGE = (256, 4095)
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


ENCRYPTED_VXLAN_PORT = 4790
KEY_ROTATION_INTERVAL = 12 * 3600.0  # as swarm


@dataclass(frozen=True)
class EncryptionConfig:
    """Encrypted networks (driver.encryption); see docs/encryption.md."""

    port: int = ENCRYPTED_VXLAN_PORT  # UDP port of encrypted networks' VXLAN devices
    rotation_interval: float = KEY_ROTATION_INTERVAL  # seconds; 0: only on request
    poll_interval: float = 2.0  # seconds between reads of the store (new keys, peers' acks)
    prune_grace: float = 5.0  # seconds an unneeded inbound SA stays, for packets in flight
    rotation_min_gap: float = 30.0  # seconds: at most one rotation in flight


@dataclass(frozen=True)
class DriverConfig:
    scope: str = "global"  # "global" for swarm, "local" for standalone dockerd
    vxlan_port: int = 4789
    vni_range: tuple[int, int] = DEFAULT_VNI_RANGE
    mtu: int | None = None  # the underlay MTU to assume; None = read it from the kernel
    data_path_addr: IPAddress | None = None  # overrides DiscoverNew's Self address
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)

    def vxlan_port_for(self, encrypted: bool) -> int:
        # Encrypted networks get their own port: xfrm policies select by port, not VNI.
        return self.encryption.port if encrypted else self.vxlan_port
