"""The kernel-lab host lab, from the test beds (:mod:`testbed.hostlab`)."""

from testbed.hostlab import Endpoint, HostLab, LabHost
from testbed.netns import nsrun

__all__ = ["Endpoint", "HostLab", "LabHost", "nsrun"]
