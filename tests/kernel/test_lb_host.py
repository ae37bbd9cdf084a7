"""The load balancer on this machine's own kernel, which may lack IPVS.

Where IPVS is missing (this project's CI hosts), ``unavailable()`` must say so
and ``program`` must fail with that reason, changing nothing. The nftables half
(``lb_nft``) needs no IPVS and is checked here in a namespace of its own; the
whole adapter runs under kernel-lab (tests/kernellab/test_lb_kernel.py).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.kernel import lb_nft, nsfs
from driver.kernel.lb import NO_IPVS, NetlinkLoadBalancer
from driver.lb.model import SandboxState, mark, sandbox_state, virtual_service
from driver.lb.port import LoadBalancerError, SandboxGone

from .conftest import require_root

pytestmark = pytest.mark.kernel

VIP_A = ipaddress.IPv4Address("10.77.0.2")
VIP_B = ipaddress.IPv4Address("10.77.0.3")
BACKEND = ipaddress.IPv4Address("10.77.0.11")
STATE = sandbox_state(
    [virtual_service(VIP_A, mark(1), {BACKEND: 1}), virtual_service(VIP_B, mark(2), {})]
)


def host_has_ipvs() -> bool:
    # ip_vs creates /proc/net/ip_vs in every namespace once it is loaded.
    return Path("/proc/net/ip_vs").exists()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    require_root()
    path = tmp_path / "sandbox"
    nsfs.create(path)
    try:
        yield path
    finally:
        nsfs.remove(path)


def nft_in(path: Path, *args: str) -> str:
    return subprocess.run(
        ["nsenter", f"--net={path}", "nft", *args],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip


def host_tables() -> str:
    return subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def test_unavailable_tells_whether_ipvs_is_there() -> None:
    reason = NetlinkLoadBalancer().unavailable()
    if host_has_ipvs():
        assert reason is None or "IPVS" not in reason
    else:
        assert reason == NO_IPVS
        assert "ip_vs" in reason


def test_program_without_ipvs_fails_clearly_and_changes_nothing(sandbox: Path) -> None:
    if host_has_ipvs():
        pytest.skip("this kernel has IPVS: tests/kernellab/test_lb_kernel.py covers programming")
    with pytest.raises(LoadBalancerError, match="no IPVS"):
        NetlinkLoadBalancer().program(sandbox, STATE)
    assert "swarmnet" not in nft_in(sandbox, "list", "tables")


def test_a_missing_or_unbound_sandbox_is_gone(tmp_path: Path) -> None:
    lb = NetlinkLoadBalancer()
    plain = tmp_path / "plain"
    plain.write_text("")  # Docker creates the file before it binds the namespace on it
    for path in (tmp_path / "missing", plain):
        with pytest.raises(SandboxGone):
            lb.program(path, STATE)
        with pytest.raises(SandboxGone):
            lb.read(path)
        lb.clear(path)


def test_nft_table_round_trip(sandbox: Path) -> None:
    def apply_and_read(state: SandboxState) -> dict[int, ipaddress.IPv4Address]:
        def work() -> dict[int, ipaddress.IPv4Address]:
            lb_nft.apply("nft", state)
            return lb_nft.read_marks("nft")

        return nsfs.run_in(sandbox, work)

    host_before = host_tables()
    assert nsfs.run_in(sandbox, lambda: lb_nft.read_marks("nft")) == {}
    assert apply_and_read(STATE) == {mark(1): VIP_A, mark(2): VIP_B}
    assert apply_and_read(STATE) == {mark(1): VIP_A, mark(2): VIP_B}
    listing = nft_in(sandbox, "list", "table", "ip", "swarmnet")
    assert listing.count("meta mark set ip daddr map @vip-marks") == 1
    assert listing.count("dnat to 127.0.0.1") == 1
    assert "10.77.0.2 : 0x736e0001" in listing
    # The host's own namespace is untouched: nft ran in the sandbox.
    assert host_tables() == host_before
    assert apply_and_read(()) == {}
    assert "swarmnet" not in nft_in(sandbox, "list", "tables")


def test_a_failing_nft_batch_changes_nothing(sandbox: Path) -> None:
    nsfs.run_in(sandbox, lambda: lb_nft.apply("nft", STATE))
    other = sandbox_state([virtual_service(VIP_A, mark(3), {})])
    # Parses, and the kernel refuses only its last command (no such table).
    failing = lb_nft.ruleset(other) + "delete table ip swarmnet-nothere\n"

    with pytest.raises(lb_nft.NftError, match="No such file or directory"):
        nsfs.run_in(sandbox, lambda: lb_nft.run("nft", ["-f", "-"], failing))
    # One batch: the table was neither deleted nor replaced.
    assert nsfs.run_in(sandbox, lambda: lb_nft.read_marks("nft")) == {
        mark(1): VIP_A,
        mark(2): VIP_B,
    }
