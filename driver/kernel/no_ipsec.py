"""The Ipsec for a kernel without ESP (or a fake kernel with no xfrm): it refuses.

An implementation of the Ipsec port (``ipsec_port``), beside ``ipsec.NetlinkIpsec``
and ``fake_ipsec.FakeIpsec``. It fails closed: an encrypted network is refused
rather than carried in clear, and there is never anything of ours to remove.
"""

from __future__ import annotations

from core.errors import Unsupported
from driver.kernel.xfrm.types import Policy, PolicyId, ProbeResult, SAId, SecurityAssociation


class NoIpsec:
    """An Ipsec that cannot: every encrypted network is refused with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def probe(self) -> ProbeResult:
        return ProbeResult(False, (), self.reason)

    def ensure_sa(self, sa: SecurityAssociation) -> bool:
        raise Unsupported(self.reason)

    def delete_sa(self, sa_id: SAId) -> bool:
        return False

    def list_sas(self) -> list[SecurityAssociation]:
        return []

    def update_policy(self, policy: Policy) -> None:
        raise Unsupported(self.reason)

    def delete_policy(self, pid: PolicyId) -> bool:
        return False

    def list_policies(self) -> list[Policy]:
        return []
