"""The Ipsec port: what the encryption use case (``driver.encryption``) asks of xfrm.

Beside the Kernel port (``port``); its implementations are ``ipsec.NetlinkIpsec``
(NETLINK_XFRM) and ``fake_ipsec.FakeIpsec`` (in memory), and
``no_ipsec.NoIpsec`` where the kernel has no ESP.
"""

from __future__ import annotations

from typing import Protocol

from driver.kernel.xfrm.types import Policy, PolicyId, ProbeResult, SAId, SecurityAssociation


class Ipsec(Protocol):
    """What the encryption use case needs from the kernel's xfrm, in one namespace.

    ``driver.kernel.ipsec.NetlinkIpsec`` talks NETLINK_XFRM; ``fake_ipsec.FakeIpsec``
    keeps the same state in memory. One contract suite runs against both.
    """

    def probe(self) -> ProbeResult:
        """Whether ESP transport with rfc4106(gcm(aes)) works here (cached)."""
        ...

    def ensure_sa(self, sa: SecurityAssociation) -> bool: ...

    def delete_sa(self, sa_id: SAId) -> bool: ...

    def list_sas(self) -> list[SecurityAssociation]: ...

    def update_policy(self, policy: Policy) -> None: ...

    def delete_policy(self, pid: PolicyId) -> bool: ...

    def list_policies(self) -> list[Policy]: ...
