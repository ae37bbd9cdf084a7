"""PoolIDs round-trip, and anything we would not have issued is rejected."""

from __future__ import annotations

import pytest

from ipam.errors import UnknownPool
from ipam.poolid import PoolRef, decode
from plugin.errors import status_of
from tests.unit.ipam.helpers import net

SPACES = ("SwarmnetLocal", "SwarmnetGlobal")


@pytest.mark.parametrize(
    "ref",
    [
        PoolRef("SwarmnetGlobal", net("10.1.2.0/24")),
        PoolRef("SwarmnetLocal", net("10.1.0.0/16"), net("10.1.2.128/25")),
        PoolRef("SwarmnetLocal", net("fd00:1::/64"), net("fd00:1::/80")),
        PoolRef("SwarmnetLocal", net("10.1.2.3/32"), net("10.1.2.3/32")),
    ],
)
def test_round_trip(ref: PoolRef) -> None:
    assert decode(str(ref), SPACES) == ref


@pytest.mark.parametrize(
    "pool_id",
    [
        "",
        "garbage",
        "SwarmnetGlobal",
        "SwarmnetGlobal/10.1.2.0",
        "LocalDefault/10.1.2.0/24",  # Docker's built-in IPAM, not ours
        "SwarmnetGlobal/10.1.2.5/24",  # host bits
        "SwarmnetGlobal/10.1.2.0/024",  # not canonical
        "SwarmnetGlobal/FD00::/64",  # not canonical
        "SwarmnetGlobal/10.1.2.0/24/10.2.0.0/25",  # sub-pool outside
        "SwarmnetGlobal/10.1.2.0/24/fd00::/64",
        "SwarmnetGlobal/10.1.2.0/24/10.1.2.0/25/x",
        "SwarmnetGlobal/10.1.2.0/33",
    ],
)
def test_ids_we_never_issued_are_rejected_naming_poolid(pool_id: str) -> None:
    with pytest.raises(UnknownPool) as e:
        decode(pool_id, SPACES)
    assert str(e.value).startswith("PoolID ")
    assert status_of(e.value) == 400
