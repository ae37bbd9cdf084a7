"""The LoadBalancer port: what service load balancing asks of a sandbox's kernel.

A sandbox is a container's network namespace, named by the path of its nsfs bind
mount (Docker's SandboxKey, seen from inside the plugin). ``program`` makes the
sandbox hold exactly the given virtual services of ours, whatever it held before,
and is idempotent, so a second process (a restarted plugin) reconciles by calling
it again. Nothing here keeps a namespace file descriptor open between calls: an
open fd would keep a dead container's namespace alive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from driver.lb.model import SandboxState


class SandboxGone(Exception):
    """The sandbox's namespace is not (or no longer) there: nothing to program."""


class LoadBalancerError(Exception):
    """The kernel refused an operation. The message names the sandbox and the object."""


class LoadBalancer(Protocol):
    def unavailable(self) -> str | None:
        """Why load balancing cannot run on this kernel (e.g. no IPVS), or None if it can."""
        ...

    def program(self, sandbox: Path, state: SandboxState) -> None:
        """Make ``sandbox`` hold exactly ``state``.

        Per virtual service: an IPVS service keyed by its fwmark (rr, NAT), one
        destination per backend with port 0 and the backend's weight; traffic to the
        VIP marked in the output path; ICMP echo to the VIP answered locally. Per
        sandbox, once: the policy rule and local route that let a task reach its own
        VIP, and Docker's IPVS sysctls. Services, destinations and rules of ours that
        are not in ``state`` are removed. Raises SandboxGone if the namespace is gone.
        """
        ...

    def clear(self, sandbox: Path) -> None:
        """Remove everything of ours from ``sandbox``; a gone namespace counts as done."""
        ...

    def read(self, sandbox: Path) -> SandboxState:
        """The virtual services of ours that ``sandbox`` holds now (from the kernel)."""
        ...
