"""Service VIP load balancing end to end: a real dockerd in swarm mode, the managed plugin,
inside kernel-lab (IPVS). ``make test-kernellab-swarm`` builds the bundle on the host
(``python -m tests.vmswarm.build``), then runs this package in ONE kernel-lab boot: the
``lab`` fixture brings dockerd, swarm and the plugin up once for the whole session.

Outside kernel-lab the tests fail with the command to use, never skip: a green run must
mean load balancing was exercised.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest

from testbed.kernellab import outside_kernel_lab
from testbed.proc import BedError as HostError
from tests.vmswarm import vmlab

HOW = "make test-kernellab-swarm (builds build/plugin.tar, then one kernel-lab boot)"
_TIMINGS = pytest.StashKey[dict[str, float]]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernellab") is not None:
        problem = outside_kernel_lab("IPVS", HOW)
        if problem:
            pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[vmlab.Lab]:
    timings: dict[str, float] = {}
    request.config.stash[_TIMINGS] = timings
    made: vmlab.Lab | None = None
    try:
        try:
            made = vmlab.up(timings)
        except HostError as e:
            pytest.fail(f"bringing up dockerd + swarm + plugin failed: {e}", pytrace=False)
        yield made
    finally:
        vmlab.save_log(made)


@pytest.fixture(scope="session")
def workloads(lab: vmlab.Lab) -> vmlab.Workloads:
    """Every network, service and client of the session, started together (see vmlab)."""
    try:
        return vmlab.start_workloads(lab)
    except HostError as e:
        pytest.fail(f"starting the services failed: {e}", pytrace=False)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each result as it happens, in build/vmswarm/progress.log on the host (the working
    directory is shared): a boot killed by its --timeout still leaves what it found."""
    if report.when != "call" and report.outcome == "passed":
        return
    vmlab.LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(vmlab.LOG_DIR / "progress.log", "a") as f:
        f.write(f"{report.nodeid} {report.when} {report.outcome} {report.duration:.1f}s\n")
        if report.failed:
            f.write(f"{report.longreprtext}\n\n")
    if report.failed:
        with contextlib.suppress(OSError):
            shutil.copyfile(vmlab.WORKDIR / "dockerd.log", vmlab.LOG_DIR / "dockerd.log")


def pytest_sessionstart(session: pytest.Session) -> None:
    with contextlib.suppress(OSError):
        (vmlab.LOG_DIR / "progress.log").unlink()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    timings = terminalreporter.config.stash.get(_TIMINGS, None)
    if timings:
        terminalreporter.write_sep("-", "vmswarm timings (s)")
        for what, secs in timings.items():
            terminalreporter.write_line(f"{what:<40} {secs:6.1f}")
