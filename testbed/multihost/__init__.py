"""The multi-host lab: an N-node Docker swarm on one machine, plus etcd.

    from testbed.multihost import Lab
    with Lab(nodes=3, workdir=Path("build/lab")) as lab:
        lab.node(1).docker("node", "ls")

CLI: ``python -m testbed.multihost up|down|status|exec NODE -- CMD``. See docs/lab.md.

``lab`` composes the rest: ``names`` (what a lab's objects are called, and finding labs
again), ``fabric`` (bridge namespace and veths), ``etcd``, ``node`` (one dockerd),
``swarm`` (image, swarm init/join, plugin install), ``spawn`` (daemons in their cgroup,
steps on all nodes at once) and ``cleanup`` (what ``down`` removes, ``leftovers`` finds).
"""

from testbed.image import IMAGE
from testbed.multihost.lab import DEFAULT_SUBNET, DEFAULT_WORKDIR, Lab, LabError
from testbed.multihost.node import Node

__all__ = ["DEFAULT_SUBNET", "DEFAULT_WORKDIR", "IMAGE", "Lab", "LabError", "Node"]
