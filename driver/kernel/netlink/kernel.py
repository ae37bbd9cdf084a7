"""NetlinkKernel: the Kernel port over netlink, one family of calls per module of this package."""

from __future__ import annotations

from pathlib import Path

from driver.kernel.netlink.endpoint import Endpoints
from driver.kernel.netlink.handles import DEFAULT_NETNS_DIR
from driver.kernel.netlink.host import HostFacts
from driver.kernel.netlink.network import Networks
from driver.kernel.netlink.peers import Peers
from driver.kernel.netlink.reaper import Reaper


class NetlinkKernel(HostFacts, Networks, Endpoints, Peers):
    """The real kernel. ``host_netns`` names the host namespace (tests); None = the caller's."""

    def __init__(self, netns_dir: Path = DEFAULT_NETNS_DIR, host_netns: Path | None = None) -> None:
        super().__init__(netns_dir, host_netns)
        self._reaper = Reaper(self._reap)
