"""The LoadBalancer port's contract (``driver.lb.port.LoadBalancer``), as a reusable class.

Run it against an adapter by subclassing and providing three fixtures:

- ``lb``: the adapter under test;
- ``sandbox``: a live sandbox that holds nothing of ours yet;
- ``gone``: a path where no sandbox is (never was, or its container died).

``peer`` is a second adapter over the same kernel, as a restarted plugin would
hold; it defaults to ``lb`` itself (an in-memory adapter has no second client).

What the real adapter does in the kernel (IPVS, nftables, rules, traffic) is
tested in tests/kernellab/test_lb_kernel.py; this states what both share.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.lb.model import SandboxState, VirtualService, mark, sandbox_state, virtual_service
from driver.lb.port import LoadBalancer, SandboxGone


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


VIP_A, VIP_B = ip("10.77.0.2"), ip("10.77.0.3")
T1, T2, T3 = ip("10.77.0.11"), ip("10.77.0.12"), ip("10.77.0.13")


SERVICE_A = virtual_service(VIP_A, mark(1), {T1: 1, T2: 1})
SERVICE_B = virtual_service(VIP_B, mark(2), {T2: 1, T3: 3})


def state(*services: VirtualService) -> SandboxState:
    return sandbox_state(list(services))


class LoadBalancerContract:
    @pytest.fixture
    def lb(self) -> Iterator[LoadBalancer]:
        raise NotImplementedError("a LoadBalancerContract subclass must provide `lb`")

    @pytest.fixture
    def sandbox(self) -> Iterator[Path]:
        raise NotImplementedError("a LoadBalancerContract subclass must provide `sandbox`")

    @pytest.fixture
    def gone(self) -> Iterator[Path]:
        raise NotImplementedError("a LoadBalancerContract subclass must provide `gone`")

    @pytest.fixture
    def peer(self, lb: LoadBalancer) -> Iterator[LoadBalancer]:
        yield lb

    # -- program and read ------------------------------------------------------------

    def test_a_new_sandbox_holds_nothing(self, lb: LoadBalancer, sandbox: Path) -> None:
        assert lb.read(sandbox) == ()

    def test_program_then_read_round_trip(self, lb: LoadBalancer, sandbox: Path) -> None:
        wanted = state(SERVICE_B, SERVICE_A)
        lb.program(sandbox, wanted)
        assert lb.read(sandbox) == wanted
        assert [s.fwmark for s in lb.read(sandbox)] == [mark(1), mark(2)]

    def test_program_is_idempotent(self, lb: LoadBalancer, sandbox: Path) -> None:
        wanted = state(SERVICE_A, SERVICE_B)
        lb.program(sandbox, wanted)
        lb.program(sandbox, wanted)
        assert lb.read(sandbox) == wanted

    def test_a_second_adapter_converges_without_duplicates(
        self, lb: LoadBalancer, peer: LoadBalancer, sandbox: Path
    ) -> None:
        lb.program(sandbox, state(SERVICE_A, SERVICE_B))
        peer.program(sandbox, state(SERVICE_A, SERVICE_B))
        assert lb.read(sandbox) == state(SERVICE_A, SERVICE_B)
        changed = virtual_service(VIP_A, mark(1), {T1: 2, T3: 1})
        peer.program(sandbox, state(changed))
        assert lb.read(sandbox) == state(changed)
        assert peer.read(sandbox) == state(changed)

    def test_services_not_in_the_state_are_removed(self, lb: LoadBalancer, sandbox: Path) -> None:
        lb.program(sandbox, state(SERVICE_A, SERVICE_B))
        lb.program(sandbox, state(SERVICE_B))
        assert lb.read(sandbox) == state(SERVICE_B)

    def test_backends_follow_the_state(self, lb: LoadBalancer, sandbox: Path) -> None:
        lb.program(sandbox, state(SERVICE_A))
        drained = virtual_service(VIP_A, mark(1), {T1: 1, T2: 0, T3: 1})
        lb.program(sandbox, state(drained))
        assert lb.read(sandbox) == state(drained)
        fewer = virtual_service(VIP_A, mark(1), {T3: 5})
        lb.program(sandbox, state(fewer))
        assert lb.read(sandbox) == state(fewer)

    def test_a_service_with_no_backends(self, lb: LoadBalancer, sandbox: Path) -> None:
        empty = virtual_service(VIP_A, mark(1), {})
        lb.program(sandbox, state(empty))
        assert lb.read(sandbox) == state(empty)

    def test_a_vip_may_move_to_another_mark(self, lb: LoadBalancer, sandbox: Path) -> None:
        lb.program(sandbox, state(SERVICE_A))
        moved = virtual_service(VIP_A, mark(9), {T1: 1})
        lb.program(sandbox, state(moved))
        assert lb.read(sandbox) == state(moved)

    def test_programming_nothing_empties_the_sandbox(self, lb: LoadBalancer, sandbox: Path) -> None:
        lb.program(sandbox, state(SERVICE_A, SERVICE_B))
        lb.program(sandbox, ())
        assert lb.read(sandbox) == ()

    def test_conflicting_services_are_refused_and_change_nothing(
        self, lb: LoadBalancer, sandbox: Path
    ) -> None:
        lb.program(sandbox, state(SERVICE_A))
        same_mark = virtual_service(VIP_B, mark(1), {T3: 1})
        same_vip = virtual_service(VIP_A, mark(2), {T3: 1})
        for bad in ((SERVICE_A, same_vip), (SERVICE_B, same_mark)):
            with pytest.raises(ValueError):
                lb.program(sandbox, tuple(bad))
        assert lb.read(sandbox) == state(SERVICE_A)

    # -- clear ---------------------------------------------------------------------

    def test_clear_removes_everything(self, lb: LoadBalancer, sandbox: Path) -> None:
        lb.program(sandbox, state(SERVICE_A, SERVICE_B))
        lb.clear(sandbox)
        assert lb.read(sandbox) == ()
        lb.clear(sandbox)  # twice is fine
        assert lb.read(sandbox) == ()

    def test_program_after_clear(self, lb: LoadBalancer, sandbox: Path) -> None:
        lb.program(sandbox, state(SERVICE_A))
        lb.clear(sandbox)
        lb.program(sandbox, state(SERVICE_B))
        assert lb.read(sandbox) == state(SERVICE_B)

    # -- a sandbox that is not there ---------------------------------------------------

    def test_program_a_gone_sandbox(self, lb: LoadBalancer, gone: Path) -> None:
        with pytest.raises(SandboxGone):
            lb.program(gone, state(SERVICE_A))

    def test_read_a_gone_sandbox(self, lb: LoadBalancer, gone: Path) -> None:
        with pytest.raises(SandboxGone):
            lb.read(gone)

    def test_clear_a_gone_sandbox_is_done(self, lb: LoadBalancer, gone: Path) -> None:
        lb.clear(gone)
