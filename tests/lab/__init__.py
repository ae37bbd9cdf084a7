"""The project's multi-host lab: an N-node Docker swarm on one machine, plus etcd.

    from tests.lab import Lab
    with Lab(nodes=3, workdir=Path("build/lab")) as lab:
        lab.node(1).docker("node", "ls")

CLI: ``python -m tests.lab up|down|status|exec NODE -- CMD``. See docs/lab.md.
"""

from tests.lab.lab import (
    DEFAULT_SUBNET,
    DEFAULT_WORKDIR,
    IMAGE,
    Lab,
    LabError,
    Node,
)

__all__ = ["DEFAULT_SUBNET", "DEFAULT_WORKDIR", "IMAGE", "Lab", "LabError", "Node"]
