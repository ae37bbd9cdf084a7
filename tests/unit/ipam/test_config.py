"""Plugin settings DEFAULT_ADDR_POOLS and DEFAULT_ADDR_POOL_MASK_LENGTH."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from ipam.config import DEFAULT_ADDR_POOLS, IpamConfig


def test_empty_settings_mean_the_defaults() -> None:
    cfg = IpamConfig.from_strings("", "")
    assert cfg.default_pools == (ip_network(DEFAULT_ADDR_POOLS),)
    assert cfg.mask_length == 24


def test_default_pool_avoids_dockers_own_defaults() -> None:
    docker = [ip_network("10.0.0.0/8"), ip_network("192.168.0.0/16")]
    docker += [ip_network(f"172.{n}.0.0/16") for n in range(17, 32)]
    for pool in IpamConfig.from_strings("", "").default_pools:
        assert not any(pool.overlaps(d) for d in docker)


@pytest.mark.parametrize(
    ("pools", "mask", "expected"),
    [
        ("10.1.0.0/16", "24", ["10.1.0.0/16"]),
        ("10.1.0.0/16,10.2.0.0/16", "20", ["10.1.0.0/16", "10.2.0.0/16"]),
        (
            " 10.2.0.0/16 , 10.1.0.0/16\n172.16.0.0/12 ",
            "24",
            ["10.2.0.0/16", "10.1.0.0/16", "172.16.0.0/12"],
        ),
        ("10.1.0.0/16", "30", ["10.1.0.0/16"]),
        ("10.1.0.0/24", "24", ["10.1.0.0/24"]),
    ],
)
def test_valid_settings(pools: str, mask: str, expected: list[str]) -> None:
    cfg = IpamConfig.from_strings(pools, mask)
    assert [str(p) for p in cfg.default_pools] == expected  # order is kept
    assert cfg.mask_length == int(mask)


@pytest.mark.parametrize(
    ("pools", "mask", "message"),
    [
        (
            "10.1.2.3/16",
            "24",
            "DEFAULT_ADDR_POOLS: 10.1.2.3/16 has host bits set; did you mean 10.1.0.0/16?",
        ),
        ("banana", "24", "DEFAULT_ADDR_POOLS: 'banana' is not a CIDR network"),
        ("10.1.0.0/33", "24", "DEFAULT_ADDR_POOLS: '10.1.0.0/33' is not a CIDR network"),
        ("10.1.0.0", "24", "DEFAULT_ADDR_POOLS: '10.1.0.0' has no prefix length"),
        ("fd00::/48", "24", "DEFAULT_ADDR_POOLS: fd00::/48 is IPv6"),
        ("10.0.0.0/8,10.1.0.0/16", "24", "DEFAULT_ADDR_POOLS: 10.1.0.0/16 overlaps 10.0.0.0/8"),
        ("10.1.0.0/25", "24", "DEFAULT_ADDR_POOLS: 10.1.0.0/25 is smaller than a /24"),
        ("10.1.0.0/16", "31", "DEFAULT_ADDR_POOL_MASK_LENGTH: 31 is out of range"),
        ("10.1.0.0/16", "0", "DEFAULT_ADDR_POOL_MASK_LENGTH: 0 is out of range"),
        ("10.1.0.0/16", "-1", "DEFAULT_ADDR_POOL_MASK_LENGTH: '-1' is not a number"),
        ("10.1.0.0/16", "/24", "DEFAULT_ADDR_POOL_MASK_LENGTH: '/24' is not a number"),
        (",", "24", "DEFAULT_ADDR_POOLS: give at least one CIDR network"),
    ],
)
def test_bad_settings_are_rejected_with_the_setting_named(
    pools: str, mask: str, message: str
) -> None:
    with pytest.raises(ValueError) as e:
        IpamConfig.from_strings(pools, mask)
    assert str(e.value).startswith(message)
