"""The project's multi-host lab, from the test beds (:mod:`testbed.multihost`): the old
import path, kept for the tests and ``python -m tests.lab``."""

from testbed.multihost import DEFAULT_SUBNET, DEFAULT_WORKDIR, IMAGE, Lab, LabError, Node

__all__ = ["DEFAULT_SUBNET", "DEFAULT_WORKDIR", "IMAGE", "Lab", "LabError", "Node"]
