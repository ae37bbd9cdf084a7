from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import FakeHarness, Harness, NetlinkHarness, NetlinkHost

ROOT_REASON = (
    "NetlinkKernel tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN to create network "
    "namespaces); run them with sudo. ONLY the in-memory FakeKernel was checked."
)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)


@pytest.fixture(params=["fake", "netlink"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """The same behaviour suite against both kernels."""
    if request.param == "fake":
        yield FakeHarness()
        return
    require_root()
    lab = NetlinkHarness(tmp_path / "lab")
    try:
        yield lab
    finally:
        lab.host.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[NetlinkHost]:
    """A netlink-only host namespace with a NetlinkKernel in it (no underlay)."""
    require_root()
    made = NetlinkHost(tmp_path / "host")
    try:
        yield made
    finally:
        made.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if any(ROOT_REASON in str(getattr(r, "longrepr", "")) for r in skipped):
        terminalreporter.write_line(f"WARNING: {ROOT_REASON}", red=True, bold=True)
