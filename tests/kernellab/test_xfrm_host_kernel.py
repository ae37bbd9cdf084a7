"""The fail-closed path on whatever kernel runs the test (root, no kernel-lab needed).

What ``probe()`` must say is read from the kernel's build configuration, not
from ``probe()`` itself: on the development host (no CONFIG_INET_ESP, no
CONFIG_CRYPTO_GCM) it must report both missing; inside kernel-lab (Debian's
6.1, both as modules) it must report support.
"""

from __future__ import annotations

import gzip
import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.kernel import nsfs
from driver.kernel.xfrm import (
    Action,
    AeadKey,
    Direction,
    Policy,
    SecurityAssociation,
    Selector,
    Template,
    Xfrm,
    XfrmUnsupported,
    probe,
)

pytestmark = pytest.mark.kernel

A = ipaddress.IPv4Address("192.0.2.1")
B = ipaddress.IPv4Address("192.0.2.2")
REQID = 0x534E01


def kernel_config() -> dict[str, str]:
    release = os.uname().release
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{release}")):
        if path.exists():
            raw = path.read_bytes()
            text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
            return dict(
                line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_")
            )
    pytest.fail(f"no kernel config for {release} in /proc/config.gz or /boot", pytrace=False)


def expected_missing() -> set[str]:
    config = kernel_config()
    built = {name for name, value in config.items() if value in ("y", "m")}
    missing = set()
    if "CONFIG_XFRM_USER" not in built:
        return {"xfrm_user"}
    if "CONFIG_CRYPTO_GCM" not in built:
        missing.add("rfc4106(gcm(aes))")
    if "CONFIG_INET_ESP" not in built:
        missing.add("esp4")
    return missing


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("needs root to create a network namespace", pytrace=False)
    path = tmp_path / "ns"
    nsfs.create(path)
    try:
        yield path
    finally:
        nsfs.remove(path)


def ip_xfrm(path: Path) -> str:
    """`ip xfrm state` + `ip xfrm policy` in the namespace: a reader independent of ours."""
    out = ""
    for what in ("state", "policy"):
        out += subprocess.run(
            ["nsenter", f"--net={path}", "ip", "xfrm", what],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    return out


def test_probe_matches_the_kernel_configuration() -> None:
    result = probe()
    missing = expected_missing()
    if not missing:
        assert result.supported, result.detail
        return
    assert not result.supported
    assert set(result.missing) == missing
    assert "cannot do IPsec ESP" in result.detail
    if "esp4" in missing:
        assert "CONFIG_INET_ESP" in result.detail and "esp4" in result.detail
    if "rfc4106(gcm(aes))" in missing:
        assert "CONFIG_CRYPTO_GCM" in result.detail


def test_a_failed_sa_add_leaves_nothing_behind(netns: Path) -> None:
    key = secrets.token_bytes(20)
    # An algorithm no kernel has: fails everywhere, so this runs on every kernel.
    names = ["rfc4106(gcm(nosuchcipher))"]
    if "rfc4106(gcm(aes))" in expected_missing() or "esp4" in expected_missing():
        names.append("rfc4106(gcm(aes))")  # the real thing, on a kernel without it
    with Xfrm(netns) as x:
        # The policy an encrypted network installs first, to show it stays as it was.
        block = Policy(Selector.any(4, dport=4790), Direction.OUT, 1000, Action.BLOCK)
        x.add_policy(block)
        before = ip_xfrm(netns)
        for name in names:
            sa = SecurityAssociation(A, B, 0x01001002, REQID, AeadKey(key, 64, name))
            with pytest.raises(XfrmUnsupported) as caught:
                x.add_sa(sa)
            assert key.hex() not in str(caught.value)
            assert "spi 0x01001002" in str(caught.value)
            assert x.list_sas() == []
            assert ip_xfrm(netns) == before
        assert x.list_policies() == [block]
        assert x.delete_policy(block.id)
    assert ip_xfrm(netns).strip() == ""


def test_policy_only_operations_work_without_esp(netns: Path) -> None:
    # Policies need no ESP support: the fail-closed block policy can be put in
    # place (and taken out) even on a kernel that will refuse every SA.
    out = Policy(
        Selector.hosts(A, B, dport=4790),
        Direction.OUT,
        100,
        templates=(Template(REQID, A, B, spi=0x01001002),),
    )
    with Xfrm(str(netns)) as x:
        assert x.ensure_policy(out) is True
        assert x.ensure_policy(out) is False
        assert x.list_policies() == [out]
        assert "dport 4790" in ip_xfrm(netns)
        assert x.flush_policies(lambda p: True) == [out.id]
    assert ip_xfrm(netns).strip() == ""
