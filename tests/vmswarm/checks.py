"""Bounded polls for the vmswarm tests: wait for a condition, then let the test assert on
the last value seen, so a failure shows what was there instead of only "timed out"."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tests.e2e.dockerhost import HostError

T = TypeVar("T")


def settle(probe: Callable[[], T], done: Callable[[T], bool], timeout: float,
           interval: float = 2.0) -> T:  # fmt: skip
    """Call ``probe`` until ``done(value)`` or ``timeout`` seconds passed; the last value.
    A probe that raises HostError counts as not done (its error is kept for the message)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except HostError:
            if time.monotonic() > deadline:
                raise
        else:
            if done(value) or time.monotonic() > deadline:
                return value
        time.sleep(interval)
