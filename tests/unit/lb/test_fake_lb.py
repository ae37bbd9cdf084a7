"""The LoadBalancer contract against the in-memory fake, and what only the fake offers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.kernel.fake_lb import FakeLoadBalancer
from driver.lb.port import LoadBalancer, LoadBalancerError, SandboxGone
from tests.contract.lb_contract import SERVICE_A, LoadBalancerContract, state


class TestFakeLoadBalancer(LoadBalancerContract):
    @pytest.fixture
    def fake(self) -> FakeLoadBalancer:
        return FakeLoadBalancer()

    @pytest.fixture
    def lb(self, fake: FakeLoadBalancer) -> Iterator[LoadBalancer]:
        yield fake

    @pytest.fixture
    def sandbox(self, fake: FakeLoadBalancer, tmp_path: Path) -> Iterator[Path]:
        path = tmp_path / "netns" / "0123456789ab"
        fake.add_sandbox(path)
        yield path

    @pytest.fixture
    def gone(self, tmp_path: Path) -> Iterator[Path]:
        yield tmp_path / "netns" / "missing"


def test_a_dead_container_is_gone(tmp_path: Path) -> None:
    fake = FakeLoadBalancer()
    fake.add_sandbox(tmp_path)
    fake.program(tmp_path, state(SERVICE_A))
    fake.remove_sandbox(tmp_path)
    with pytest.raises(SandboxGone):
        fake.read(tmp_path)
    fake.add_sandbox(tmp_path)  # a new container at the same path holds nothing
    assert fake.read(tmp_path) == ()


def test_unavailable_reason() -> None:
    assert FakeLoadBalancer().unavailable() is None
    assert FakeLoadBalancer(unavailable="no IPVS").unavailable() == "no IPVS"


def test_injected_failure_happens_once_and_changes_nothing(tmp_path: Path) -> None:
    fake = FakeLoadBalancer()
    fake.add_sandbox(tmp_path)
    fake.fail_next["program"] = LoadBalancerError("boom")
    with pytest.raises(LoadBalancerError):
        fake.program(tmp_path, state(SERVICE_A))
    assert fake.read(tmp_path) == ()
    fake.program(tmp_path, state(SERVICE_A))
    assert fake.read(tmp_path) == state(SERVICE_A)
    assert fake.calls == [("program", tmp_path), ("read", tmp_path)] * 2
