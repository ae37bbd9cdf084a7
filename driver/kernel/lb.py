"""The LoadBalancer port on the real kernel: IPVS, nftables and a policy rule per sandbox.

What one sandbox (a container's network namespace) holds of ours:

- per virtual service, an IPVS service keyed by its fwmark (``lb_ipvs``);
- the table ``ip swarmnet`` marking VIP traffic and answering pings (``lb_nft``);
- once: ``ip rule fwmark MARK_BASE/MARK_MASK lookup ROUTE_TABLE`` (priority
  RULE_PRIORITY) and ``local default dev lo`` in ROUTE_TABLE. Without them, when
  round robin picks the client's own address, IPVS keeps the route the packet had
  to the VIP ("preserve old route" in ip_vs_xmit.c), the kernel ARPs for its own
  address and the connection times out (measured under kernel-lab: 10 of 20
  failed; with the rule and route 20 of 20 succeed, which
  tests/kernellab/test_lb_kernel.py checks). The rule also catches packets that
  NAT re-routes after IPVS, which ``lb_nft`` unmarks first (see there why);
- Docker's IPVS sysctls (``SYSCTLS``), which are per namespace.

Every call runs in one throwaway thread that setns()es into the sandbox
(``nsfs.run_in``): the IPVS and rtnetlink sockets are created there, ``/proc/sys/net``
resolves against that thread's namespace, and ``nft`` is forked from it. Every
socket is closed before the thread ends, so no call leaves anything holding the
namespace (an open fd or socket would keep a dead container's namespace alive).

``program`` diffs rather than flushes: services and destinations are added and
updated first, then the marking table is replaced atomically, then stale services
are removed. A second call, or one from another process, finds nothing to change.

Sysctls: a failure to write one is a LoadBalancerError naming it (unless the
adapter was built with ``require_sysctls=False``, then a warning). Each is read
first and written only when it differs, so a read-only /proc/sys that already
holds the values passes. Why an error by default: without them IPVS still
balances, but quietly differently from Docker's overlay (connections to a removed
backend hang until their timeout instead of being dropped, IPVS connections are
untracked by conntrack, and a reused source port may stall), and the project does
not let a degraded data path go unnoticed. The check runs before anything is
changed, so a sandbox is never left half-programmed by it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPVS, IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket
from pyroute2.netlink.generic.ipvs import ipvsmsg

from driver.kernel import lb_ipvs, lb_nft, lb_state, nsfs, procsys
from driver.lb.model import (
    MARK_BASE,
    MARK_MASK,
    ROUTE_TABLE,
    SandboxState,
    sandbox_state,
    virtual_service,
)
from driver.lb.port import LoadBalancerError, SandboxGone

log = logging.getLogger(__name__)

T = TypeVar("T")
Handle = Any  # pyroute2 handles; pyroute2 ships no type information

# Below "from all lookup main" (32766), so marked packets meet our table first.
RULE_PRIORITY = 29550
RTN_LOCAL = 2
RT_SCOPE_HOST = 254
FR_ACT_TO_TBL = 1
SYSCTLS = (
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.conn_reuse_mode", "0"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
)
NO_IPVS = "the kernel has no IPVS (ip_vs module): service VIP load balancing is off"


class NetlinkLoadBalancer:
    """IPVS load balancing programmed into sandboxes through netlink and ``nft``."""

    def __init__(self, nft: str = "nft", require_sysctls: bool = True) -> None:
        self._nft = nft
        self._require_sysctls = require_sysctls
        # One sandbox at a time: two overlapping diffs of one namespace would race.
        self._lock = threading.Lock()

    # -- the port --------------------------------------------------------------

    def unavailable(self) -> str | None:
        try:
            _probe_ipvs()
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return NO_IPVS
            return f"IPVS does not answer: {os.strerror(exc.code)} (errno {exc.code})"
        except OSError as exc:
            return f"IPVS does not answer: {exc}"
        path = shutil.which(self._nft)
        if path is None:
            return f"{self._nft} not found: install Debian's nftables package in the plugin"
        try:
            lb_nft.run(path, ["list", "tables"])
        except lb_nft.NftError as exc:
            return f"nftables does not work: {exc}"
        return None

    def program(self, sandbox: Path, state: SandboxState) -> None:
        lb_state.check(state)
        state = sandbox_state(state)
        with self._lock:
            changes = self._in(sandbox, lambda: self._program_here(sandbox, state))
        if changes:
            log.debug("load balancing: sandbox %s: %s", sandbox.name, "; ".join(changes))

    def clear(self, sandbox: Path) -> None:
        with self._lock:
            try:
                changes = self._in(sandbox, lambda: self._program_here(sandbox, ()))
            except SandboxGone:
                return
        if changes:
            log.debug("load balancing: sandbox %s cleared: %s", sandbox.name, "; ".join(changes))

    def read(self, sandbox: Path) -> SandboxState:
        with self._lock:
            return self._in(sandbox, lambda: self._read_here(sandbox))

    # -- inside the sandbox ------------------------------------------------------

    def _in(self, sandbox: Path, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside the sandbox's namespace."""
        if not nsfs.is_netns(sandbox):
            raise SandboxGone(f"sandbox {sandbox}: no network namespace is bound there")
        entered = False

        def body() -> T:
            nonlocal entered
            entered = True
            return fn()

        try:
            return nsfs.run_in(sandbox, body)
        except OSError as exc:
            if not entered:  # unbound between our look and setns()
                raise SandboxGone(f"sandbox {sandbox}: {exc}") from exc
            raise

    def _program_here(self, sandbox: Path, state: SandboxState) -> list[str]:
        changes: list[str] = []
        with _errors(sandbox, "IPVS"), _ipvs(sandbox) as ipvs:
            if state:
                changes += self._sysctls(sandbox)
            with _errors(sandbox, "IPVS services"):
                changes += lb_ipvs.converge(ipvs, state)
            with _errors(sandbox, "policy rule and route"), IPRoute(groups=0) as ipr:
                changes += _routing(ipr, bool(state))
            with _errors(sandbox, f"nftables table {lb_nft.TABLE}"):
                lb_nft.apply(self._nft, state)
            with _errors(sandbox, "IPVS services"):
                changes += lb_ipvs.remove_stale(ipvs, state)
        return changes

    def _read_here(self, sandbox: Path) -> SandboxState:
        with _errors(sandbox, "IPVS"), _ipvs(sandbox) as ipvs:
            backends = lb_ipvs.read(ipvs)
        with _errors(sandbox, f"nftables table {lb_nft.TABLE}"):
            vips = lb_nft.read_marks(self._nft)
        # A service whose traffic nothing marks shows with VIP 0.0.0.0, so that a
        # comparison with any wanted state sees it (``program`` repairs it).
        unmarked = ipaddress.IPv4Address(0)
        return sandbox_state(
            [
                virtual_service(vips.get(mark, unmarked), mark, {b.ip: b.weight for b in found})
                for mark, found in backends.items()
            ]
        )

    def _sysctls(self, sandbox: Path) -> list[str]:
        changes = []
        for key, value in SYSCTLS:
            try:
                if procsys.set_sysctl(key, value):
                    changes.append(f"{key}={value}")
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                message = f"sandbox {sandbox}: cannot set sysctl {key}={value}: {reason}"
                if self._require_sysctls:
                    raise LoadBalancerError(message) from exc
                log.warning("load balancing: %s", message)
        return changes


def _probe_ipvs() -> None:
    """Raise NetlinkError(ENOENT) if the generic netlink family IPVS is missing.

    ``IPVS()`` itself finds the family in its constructor and, when that fails,
    leaks its socket (measured: +1.6 fds per call), and a socket left in a sandbox
    would keep its namespace alive; a bare generic socket can be closed.
    """
    sock = GenericNetlinkSocket()
    try:
        sock.bind("IPVS", ipvsmsg)
    finally:
        sock.close()


@contextmanager
def _ipvs(sandbox: Path) -> Iterator[Handle]:
    try:
        _probe_ipvs()
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            raise LoadBalancerError(f"sandbox {sandbox}: {NO_IPVS}") from exc
        raise
    with IPVS() as handle:
        yield handle


@contextmanager
def _errors(sandbox: Path, what: str) -> Iterator[None]:
    """Netlink, nft and OS errors -> LoadBalancerError naming the sandbox and the object."""
    try:
        yield
    except (LoadBalancerError, SandboxGone):
        raise
    except NetlinkError as exc:
        raise LoadBalancerError(
            f"sandbox {sandbox}: {what}: {os.strerror(exc.code)} (errno {exc.code})"
        ) from exc
    except lb_nft.NftError as exc:
        raise LoadBalancerError(f"sandbox {sandbox}: {what}: {exc}") from exc
    except OSError as exc:
        raise LoadBalancerError(f"sandbox {sandbox}: {what}: {exc}") from exc


def _routing(ipr: Handle, wanted: bool) -> list[str]:
    """Make the rule and route of ours exist (``wanted``) or not; what changed."""
    changes = []
    rule = {"fwmark": MARK_BASE, "fwmask": MARK_MASK, "priority": RULE_PRIORITY}
    ok = False
    for msg in ipr.rule("dump", family=socket.AF_INET):
        if msg.get("table") != ROUTE_TABLE:
            continue
        mine = (
            wanted
            and not ok
            and msg["action"] == FR_ACT_TO_TBL
            and all(msg.get(k) == v for k, v in rule.items())
        )
        if mine:
            ok = True
            continue
        _delete(ipr.rule, family=socket.AF_INET, table=ROUTE_TABLE, **_rule_key(msg))
        changes.append(f"rule to table {ROUTE_TABLE} (priority {msg.get('priority')}) removed")
    if wanted and not ok:
        try:
            ipr.rule("add", family=socket.AF_INET, table=ROUTE_TABLE, **rule)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        changes.append(f"rule fwmark {MARK_BASE:#x}/{MARK_MASK:#x} lookup {ROUTE_TABLE} added")

    lo = ipr.link_lookup(ifname="lo")[0]
    ok = False
    for msg in ipr.route("dump", family=socket.AF_INET, table=ROUTE_TABLE):
        if msg.get("table") != ROUTE_TABLE:
            continue
        mine = (
            wanted
            and not ok
            and msg["type"] == RTN_LOCAL
            and msg["dst_len"] == 0
            and msg.get("oif") == lo
        )
        if mine:
            ok = True
            continue
        dst = f"{msg.get('dst') or '0.0.0.0'}/{msg['dst_len']}"
        _delete(
            ipr.route,
            family=socket.AF_INET,
            table=ROUTE_TABLE,
            type=msg["type"],
            scope=msg["scope"],  # the kernel deletes only on a matching scope
            dst=dst,
        )
        changes.append(f"route {dst} in table {ROUTE_TABLE} removed")
    if wanted and not ok:
        ipr.route(
            "replace",
            family=socket.AF_INET,
            dst="0.0.0.0/0",
            table=ROUTE_TABLE,
            type=RTN_LOCAL,
            scope=RT_SCOPE_HOST,
            oif=lo,
        )
        changes.append(f"route local default dev lo in table {ROUTE_TABLE} added")
    return changes


def _rule_key(msg: Any) -> dict[str, Any]:
    key = {"priority": msg.get("priority"), "action": msg["action"]}
    for field in ("fwmark", "fwmask"):
        if msg.get(field) is not None:
            key[field] = msg.get(field)
    return key


def _delete(call: Callable[..., Any], **kwarg: Any) -> None:
    """Delete a rule or route; one already gone counts as done."""
    try:
        call("del", **kwarg)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise
