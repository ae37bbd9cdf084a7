"""The in-process control plane, from the test beds (:mod:`testbed.hub`)."""

from testbed.hub import Hub, HubPlane

__all__ = ["Hub", "HubPlane"]
