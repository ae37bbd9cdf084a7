"""An in-memory Ipsec for unit tests, with the kernel's identities and answers.

SAs are found as the kernel finds them, by (destination, SPI, protocol, mark),
so two SAs that differ only in their source collide, as they do in the kernel.
Policies by (selector, direction, mark); priority is not part of the identity.
The contract suite (tests/unit/test_encryption_contract.py, and inside
kernel-lab against the real kernel) keeps this honest.
"""

from __future__ import annotations

import errno
import threading

from core.iptypes import IPAddress
from driver.kernel.xfrm.types import (
    AEAD_RFC4106_GCM_AES,
    Mark,
    Policy,
    PolicyId,
    ProbeResult,
    SAId,
    SecurityAssociation,
    XfrmError,
    XfrmUnsupported,
)

SAIdentity = tuple[IPAddress, int, int, Mark | None]

# What probe() reports on the development host, whose kernel has neither.
HOST_MISSING = (AEAD_RFC4106_GCM_AES, "esp4")


def _identity(sa_id: SAId) -> SAIdentity:
    return sa_id.dst, sa_id.spi, sa_id.proto, sa_id.mark


class FakeIpsec:
    def __init__(self, supported: bool = True, missing: tuple[str, ...] = HOST_MISSING) -> None:
        self.supported = supported
        self.missing = () if supported else missing
        self._lock = threading.Lock()
        self.sas: dict[SAIdentity, SecurityAssociation] = {}
        self.policies: dict[PolicyId, Policy] = {}
        self.probes = 0
        # Failure injection: method name -> exception raised by its next call.
        self.fail_next: dict[str, Exception] = {}
        # Every change, in order: ("add_sa" | "del_sa" | "set_policy" | "del_policy", object).
        self.journal: list[tuple[str, object]] = []

    def _maybe_fail(self, method: str) -> None:
        exc = self.fail_next.pop(method, None)
        if exc is not None:
            raise exc

    def _unsupported(self, sa: SecurityAssociation) -> XfrmUnsupported:
        what = f"adding {sa}"
        return XfrmUnsupported(
            errno.ENOSYS, what, self.missing, "Requested AEAD algorithm not found"
        )

    def probe(self) -> ProbeResult:
        self.probes += 1
        if self.supported:
            return ProbeResult(True)
        exc = XfrmUnsupported(
            errno.ENOSYS,
            "adding SA esp spi 0x41a930ff 192.0.2.1->192.0.2.2 reqid 0x70726f62",
            self.missing,
            "Requested AEAD algorithm not found",
        )
        return ProbeResult(False, self.missing, str(exc))

    def ensure_sa(self, sa: SecurityAssociation) -> bool:
        self._maybe_fail("ensure_sa")
        if not self.supported:
            raise self._unsupported(sa)
        if sa.aead is not None and sa.aead.name != AEAD_RFC4106_GCM_AES:
            raise XfrmUnsupported(errno.ENOSYS, f"adding {sa}", (sa.aead.name,))
        with self._lock:
            current = self.sas.get(_identity(sa.id))
            if current == sa:
                return False
            if current is not None:
                raise XfrmError(
                    errno.EEXIST, f"adding {sa}", "an SA with this SPI exists with other parameters"
                )
            self.sas[_identity(sa.id)] = sa
            self.journal.append(("add_sa", sa))
            return True

    def delete_sa(self, sa_id: SAId) -> bool:
        self._maybe_fail("delete_sa")
        with self._lock:
            gone = self.sas.pop(_identity(sa_id), None)
            if gone is not None:
                self.journal.append(("del_sa", gone))
            return gone is not None

    def list_sas(self) -> list[SecurityAssociation]:
        with self._lock:
            return list(self.sas.values())

    def update_policy(self, policy: Policy) -> None:
        self._maybe_fail("update_policy")
        with self._lock:
            self.policies[policy.id] = policy
            self.journal.append(("set_policy", policy))

    def delete_policy(self, pid: PolicyId) -> bool:
        self._maybe_fail("delete_policy")
        with self._lock:
            gone = self.policies.pop(pid, None)
            if gone is not None:
                self.journal.append(("del_policy", gone))
            return gone is not None

    def list_policies(self) -> list[Policy]:
        with self._lock:
            return list(self.policies.values())
