"""Inside ../shared/kernel-lab or not: the suites that need ESP or IPVS fail outside it,
never skip, or a green run would say nothing about encryption or load balancing."""

from __future__ import annotations

import os
import socket


def in_kernel_lab() -> bool:
    return socket.gethostname() == "kernel-lab"


def outside_kernel_lab(need: str, how: str) -> str | None:
    """Why a test that needs ``need`` cannot run here (with ``how`` to run it), or None."""
    if not in_kernel_lab():
        return f"this test needs {need} and must run inside kernel-lab: {how}"
    if os.geteuid() != 0:
        return "kernel-lab tests run as root"
    return None
