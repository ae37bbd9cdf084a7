"""The multi-host lab's names as the lab tests import them (see :mod:`testbed.multihost.lab`)."""

from testbed.cgroups import cgroup_procs as _cgroup_procs
from testbed.cgroups import find_cgroups
from testbed.dockerd import DOCKER, DOCKERD
from testbed.image import IMAGE
from testbed.mounts import mounts_under
from testbed.multihost.etcd import ETCD, ETCDCTL
from testbed.multihost.lab import DEFAULT_SUBNET, Lab, LabError
from testbed.multihost.node import Node
from testbed.proc import netns_pids

__all__ = [
    "DEFAULT_SUBNET",
    "DOCKER",
    "DOCKERD",
    "ETCD",
    "ETCDCTL",
    "IMAGE",
    "Lab",
    "LabError",
    "Node",
    "_cgroup_procs",
    "find_cgroups",
    "mounts_under",
    "netns_pids",
]
