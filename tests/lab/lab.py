"""The multi-host lab's names as the lab tests import them (see :mod:`testbed.multihost.lab`)."""

from testbed.cgroups import cgroup_procs as _cgroup_procs
from testbed.cgroups import find_cgroups
from testbed.dockerd import DOCKER, DOCKERD
from testbed.image import IMAGE
from testbed.mounts import mounts_under
from testbed.multihost.lab import ETCD, ETCDCTL, Lab, LabError, Node
from testbed.proc import netns_pids

__all__ = [
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
