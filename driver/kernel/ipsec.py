"""The Ipsec port (``driver.kernel.ipsec_port``) over NETLINK_XFRM (``driver.kernel.xfrm``).

One ``Xfrm`` socket in the host namespace, opened on first use (never at import
or before the server starts) and kept: xfrm calls are a request and an ack each.
``probe()`` runs once and is cached: a kernel does not gain ESP while it runs.
"""

from __future__ import annotations

import threading

from driver.kernel.xfrm import (
    NEW_NETNS,
    Netns,
    Policy,
    PolicyId,
    ProbeResult,
    SAId,
    SecurityAssociation,
    Xfrm,
    probe,
)


class NetlinkIpsec:
    """``netns``: the host namespace (None: the caller's), as ``Xfrm`` takes it."""

    def __init__(self, netns: Netns = None) -> None:
        self._netns = netns
        self._xfrm: Xfrm | None = None
        self._probed: ProbeResult | None = None
        self._lock = threading.Lock()

    def _x(self) -> Xfrm:
        with self._lock:
            if self._xfrm is None:
                self._xfrm = Xfrm(self._netns)
            return self._xfrm

    def probe(self) -> ProbeResult:
        with self._lock:
            if self._probed is None:
                # A throwaway namespace: nothing can be left behind in the host's.
                self._probed = probe(NEW_NETNS)
            return self._probed

    def ensure_sa(self, sa: SecurityAssociation) -> bool:
        return self._x().ensure_sa(sa)

    def delete_sa(self, sa_id: SAId) -> bool:
        return self._x().delete_sa(sa_id)

    def list_sas(self) -> list[SecurityAssociation]:
        return self._x().list_sas()

    def update_policy(self, policy: Policy) -> None:
        self._x().update_policy(policy)

    def delete_policy(self, pid: PolicyId) -> bool:
        return self._x().delete_policy(pid)

    def list_policies(self) -> list[Policy]:
        return self._x().list_policies()

    def close(self) -> None:
        with self._lock:
            if self._xfrm is not None:
                self._xfrm.close()
                self._xfrm = None
