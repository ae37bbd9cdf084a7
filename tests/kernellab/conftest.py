"""Tests marked ``kernellab`` need ESP, so they run inside ../shared/kernel-lab.

Outside the VM they fail with the command to use: they must never be skipped
quietly, or a green run would say nothing about encryption.
"""

from __future__ import annotations

import os
import socket

import pytest

RUN = (
    "/work/shared/kernel-lab/run --timeout 600 -- "
    "/root/.pyenv/versions/3.11.7/bin/python -m pytest -q tests/kernellab"
)


def in_kernel_lab() -> bool:
    return socket.gethostname() == "kernel-lab"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernellab") is None:
        return
    if not in_kernel_lab():
        pytest.fail(
            "this test needs a kernel with ESP and must run inside kernel-lab "
            f"(set it up once with /work/shared/kernel-lab/setup), e.g.: {RUN}",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("kernel-lab tests run as root", pytrace=False)
