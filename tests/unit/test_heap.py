"""plugin.heap: one malloc_trim when the process goes quiet after a burst of work."""

from __future__ import annotations

import platform
import threading
import time

import pytest

from plugin.heap import Trimmer, malloc_trim


def trims(readings: list[float]) -> int:
    """How often the trimmer trims while its CPU clock reads ``readings``, one per look
    (and one more right after each trim); then the clock stands still."""
    left = list(readings)
    done = threading.Event()
    count = 0

    def cpu() -> float:
        if len(left) > 1:
            return left.pop(0)
        done.set()
        return left[0]

    def trim() -> int:
        nonlocal count
        count += 1
        return 1

    trimmer = Trimmer(trim, interval=0.001, busy=0.05, cpu=cpu).start()
    assert done.wait(5)
    time.sleep(0.05)
    trimmer.stop()
    return count


def test_start_up_is_a_burst_so_the_first_quiet_interval_trims() -> None:
    # start, quiet look (trim, then a reading), and idle ever after
    assert trims([0.0, 0.01, 0.01, 0.02]) == 1


def test_one_trim_after_each_burst_none_during_it() -> None:
    readings = [0.0]  # start
    readings += [0.0, 0.0]  # quiet: trim (start-up was a burst), the reading after it
    readings += [0.2, 0.5]  # busy, busy
    readings += [0.51, 0.51]  # quiet: trim, the reading after it
    readings += [0.52]  # quiet, nothing to trim
    readings += [0.62]  # busy
    readings += [0.62, 0.62]  # quiet: trim, the reading after it
    assert trims(readings) == 3


def test_stop_is_prompt() -> None:
    trimmer = Trimmer(lambda: 1, interval=30).start()
    started = time.monotonic()
    trimmer.stop()
    assert time.monotonic() - started < 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_has_malloc_trim() -> None:
    trim = malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)
