"""Tests marked ``kernellab`` need ESP, so they run inside ../shared/kernel-lab.

Outside the VM they fail with the command to use: they must never be skipped
quietly, or a green run would say nothing about encryption.
"""

from __future__ import annotations

import pytest

from testbed.kernellab import outside_kernel_lab

RUN = (
    "/work/shared/kernel-lab/run --timeout 600 -- "
    "/root/.pyenv/versions/3.11.7/bin/python -m pytest -q tests/kernellab"
)
HOW = f"(set it up once with /work/shared/kernel-lab/setup), e.g.: {RUN}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernellab") is not None:
        problem = outside_kernel_lab("a kernel with ESP", HOW)
        if problem:
            pytest.fail(problem, pytrace=False)
