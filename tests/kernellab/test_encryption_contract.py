"""The Ipsec port's contract against the real kernel (NetlinkIpsec), inside kernel-lab.

The functions are tests/unit/test_encryption_contract.py's, where they run
against FakeIpsec: one suite, both implementations.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from driver.kernel.ipsec import NetlinkIpsec
from driver.kernel.ipsec_port import Ipsec
from driver.kernel.xfrm import NEW_NETNS
from tests.unit.test_encryption_contract import (
    test_an_sa_is_found_by_destination_and_spi_not_source,
    test_an_unknown_aead_is_unsupported_and_adds_nothing,
    test_policies_are_identified_by_selector_and_direction,
    test_probe_reports_support,
    test_sa_delete_is_true_once_then_false,
    test_sa_ensure_is_idempotent_and_a_conflict_names_no_key,
    test_the_policies_encryption_installs_read_back_as_ours,
)

pytestmark = pytest.mark.kernellab

__all__ = [
    "test_an_sa_is_found_by_destination_and_spi_not_source",
    "test_an_unknown_aead_is_unsupported_and_adds_nothing",
    "test_policies_are_identified_by_selector_and_direction",
    "test_probe_reports_support",
    "test_sa_delete_is_true_once_then_false",
    "test_sa_ensure_is_idempotent_and_a_conflict_names_no_key",
    "test_the_policies_encryption_installs_read_back_as_ours",
]


@pytest.fixture
def ipsec() -> Iterator[Ipsec]:
    """A throwaway namespace per test: it vanishes with the socket."""
    made = NetlinkIpsec(NEW_NETNS)
    try:
        yield made
    finally:
        made.close()
