"""The Ipsec port's contract: FakeIpsec here, NetlinkIpsec inside kernel-lab.

tests/kernellab/test_encryption_contract.py runs these same functions against
the real kernel (ESP needs kernel-lab), so the fake the unit tests trust
behaves as the kernel does: identities, idempotence, errors, key redaction.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
from collections.abc import Iterator
from dataclasses import replace

import pytest

from driver.ipsec_keys import REQID
from driver.ipsec_policies import block_policy, in_policy, is_ours, out_policy
from driver.kernel.fake_ipsec import FakeIpsec
from driver.kernel.ipsec_port import Ipsec
from driver.kernel.xfrm.types import (
    AeadKey,
    Direction,
    Policy,
    SAId,
    SecurityAssociation,
    Selector,
    Template,
    XfrmError,
    XfrmUnsupported,
)

A = ipaddress.IPv4Address("192.0.2.1")
B = ipaddress.IPv4Address("192.0.2.2")
C = ipaddress.IPv4Address("192.0.2.3")
PORT = 4790


def esp(
    src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, spi: int, key: bytes
) -> SecurityAssociation:
    return SecurityAssociation(src, dst, spi, REQID, AeadKey(key, 64))


@pytest.fixture
def ipsec() -> Iterator[Ipsec]:
    yield FakeIpsec()


def test_probe_reports_support(ipsec: Ipsec) -> None:
    result = ipsec.probe()
    assert result.supported, result.detail
    assert result.missing == ()


def test_sa_ensure_is_idempotent_and_a_conflict_names_no_key(ipsec: Ipsec) -> None:
    key, other = secrets.token_bytes(20), secrets.token_bytes(20)
    sa = esp(A, B, 0x02001002, key)
    assert ipsec.ensure_sa(sa) is True
    assert ipsec.ensure_sa(sa) is False
    assert ipsec.list_sas() == [sa]
    with pytest.raises(XfrmError) as caught:
        ipsec.ensure_sa(replace(sa, aead=AeadKey(other, 64)))
    assert caught.value.errno == errno.EEXIST
    for secret in (key, other):
        assert secret.hex() not in str(caught.value) and repr(secret) not in str(caught.value)
    assert ipsec.list_sas() == [sa]  # the conflicting one did not replace it


def test_an_sa_is_found_by_destination_and_spi_not_source(ipsec: Ipsec) -> None:
    sa = esp(A, B, 0x02001002, secrets.token_bytes(20))
    ipsec.ensure_sa(sa)
    with pytest.raises(XfrmError) as caught:
        ipsec.ensure_sa(replace(sa, src=C))
    assert caught.value.errno == errno.EEXIST
    # The kernel ignores the source when deleting, too.
    assert ipsec.delete_sa(SAId(C, B, sa.spi)) is True
    assert ipsec.list_sas() == []


def test_sa_delete_is_true_once_then_false(ipsec: Ipsec) -> None:
    sas = [
        esp(A, B, 0x02001002, secrets.token_bytes(20)),
        esp(B, A, 0x02002001, secrets.token_bytes(20)),
    ]
    for sa in sas:
        ipsec.ensure_sa(sa)
    assert sorted(ipsec.list_sas(), key=str) == sorted(sas, key=str)
    for sa in sas:
        assert ipsec.delete_sa(sa.id) is True
        assert ipsec.delete_sa(sa.id) is False
    assert ipsec.list_sas() == []


def test_policies_are_identified_by_selector_and_direction(ipsec: Ipsec) -> None:
    first = out_policy(A, B, 0x02001002, PORT)
    ipsec.update_policy(first)
    assert ipsec.list_policies() == [first]
    # Same selector and direction, another SPI and priority: replaced in one step.
    second = replace(first, priority=50, templates=(Template(REQID, A, B, spi=0x03001002),))
    ipsec.update_policy(second)
    assert ipsec.list_policies() == [second]
    other_way = Policy(
        Selector.hosts(A, B, dport=PORT), Direction.IN, 100, templates=(Template(REQID),)
    )
    ipsec.update_policy(other_way)
    assert len(ipsec.list_policies()) == 2
    assert ipsec.delete_policy(second.id) is True
    assert ipsec.delete_policy(second.id) is False
    assert ipsec.delete_policy(other_way.id) is True
    assert ipsec.list_policies() == []


def test_the_policies_encryption_installs_read_back_as_ours(ipsec: Ipsec) -> None:
    made = [block_policy(PORT), in_policy(PORT), out_policy(A, B, 0x02001002, PORT)]
    for policy in made:
        ipsec.update_policy(policy)
    listed = ipsec.list_policies()
    assert sorted(listed, key=str) == sorted(made, key=str)
    assert all(is_ours(p) for p in listed)
    someone_elses = Policy(
        Selector.any(4, dport=PORT), Direction.OUT, 1000, templates=(Template(0x1234),)
    )
    assert not is_ours(someone_elses)
    for policy in made:
        assert ipsec.delete_policy(policy.id)


def test_an_unknown_aead_is_unsupported_and_adds_nothing(ipsec: Ipsec) -> None:
    bogus = AeadKey(secrets.token_bytes(20), 64, name="rfc4106(gcm(nosuchcipher))")
    with pytest.raises(XfrmUnsupported) as caught:
        ipsec.ensure_sa(SecurityAssociation(A, B, 0x02001002, REQID, bogus))
    assert caught.value.missing == ("rfc4106(gcm(nosuchcipher))",)
    assert ipsec.list_sas() == []
