"""The e2e suite's dockerd, from the test beds (:mod:`testbed.dockerhost`): the names the e2e,
vmswarm and build modules import."""

from testbed.dockerd import DOCKER, DOCKERD, PLUGIN_NAME, unix_post
from testbed.dockerhost import (
    NETNS_PREFIX,
    PLUGIN_EXEC_ROOT,
    REGISTRY_DIR,
    REPO,
    UNDERLAY,
    UNDERLAY_ADDR,
    UNDERLAY_MTU,
    DockerHost,
    cleanup_stale,
)
from testbed.image import BUSYBOX, IMAGE, busybox_tar
from testbed.mounts import mounts_under, nsfs_mounts_under, propagation
from testbed.proc import NETNS_DIR, run, wait_for
from testbed.proc import BedError as HostError

__all__ = [
    "BUSYBOX",
    "DOCKER",
    "DOCKERD",
    "IMAGE",
    "NETNS_DIR",
    "NETNS_PREFIX",
    "PLUGIN_EXEC_ROOT",
    "PLUGIN_NAME",
    "REGISTRY_DIR",
    "REPO",
    "UNDERLAY",
    "UNDERLAY_ADDR",
    "UNDERLAY_MTU",
    "DockerHost",
    "HostError",
    "busybox_tar",
    "cleanup_stale",
    "mounts_under",
    "nsfs_mounts_under",
    "propagation",
    "run",
    "unix_post",
    "wait_for",
]
