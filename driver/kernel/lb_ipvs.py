"""IPVS services of ours in one namespace, through a pyroute2 ``IPVS`` handle.

Ours: services keyed by a fwmark with ``is_our_mark``; nothing else is read or
changed. Each is what Docker's overlay made (``ipvsadm -A -f M -s rr``,
``-a -f M -r IP:0 -m -w W``). pyroute2 0.9.7 pitfalls, met on Debian's 6.1:

- a fwmark service without ``netmask`` is refused with EINVAL;
- a destination without ``fwd_method`` is direct routing (pyroute2's default 3);
- ``dest("update")`` sends IPVS_CMD_DEL_DEST: a weight change must be ``"set"``;
- a destination is refused with EINVAL in a namespace that has no local routing
  table yet (``lo`` down, no address): the kernel checks its address type there.
  A container always has ``lo`` up.

The handle must be opened in the sandbox's namespace (an IPVS socket acts on the
namespace it was created in). ``IPVS(netns=...)`` would fork a child process per
socket (pyroute2.netns.create_socket) and, with its default O_CREAT, create the
namespace if it were gone, so the caller opens it from a thread setns'd there.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPVSDest, IPVSService

from driver.lb.model import Backend, SandboxState, is_our_mark

Handle = Any  # a pyroute2 IPVS; pyroute2 ships no type information
Msg = Any

SCHEDULER = "rr"
HOST_MASK = "255.255.255.255"
MASQ = 0  # IP_VS_CONN_F_MASQ: NAT
_AF: dict[int, int] = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}


@dataclass(frozen=True)
class Service:
    af: int
    fwmark: int
    sched: str
    netmask: str | None


@dataclass(frozen=True)
class Dest:
    addr: str
    port: int
    weight: int
    fwd: int


def _svc_key(af: int, fwmark: int) -> Any:
    return IPVSService(fwmark=fwmark, af=af)


def _svc_full(fwmark: int) -> Any:
    return IPVSService(fwmark=fwmark, af=socket.AF_INET, netmask=HOST_MASK, sched_name=SCHEDULER)


def _dest(ip: str, weight: int = 1, port: int = 0) -> Any:
    return IPVSDest(addr=ip, port=port, fwd_method=MASQ, weight=weight)


def services(ipvs: Handle) -> list[Service]:
    """Our services, as the kernel dumps them."""
    found = []
    for msg in ipvs.service("dump"):
        attrs = msg.get("IPVS_CMD_ATTR_SERVICE")
        fwmark = int(attrs.get("IPVS_SVC_ATTR_FWMARK") or 0)
        if not is_our_mark(fwmark):
            continue
        netmask = attrs.get("IPVS_SVC_ATTR_NETMASK")
        found.append(
            Service(
                af=int(attrs.get("IPVS_SVC_ATTR_AF")),
                fwmark=fwmark,
                sched=str(attrs.get("IPVS_SVC_ATTR_SCHED_NAME")),
                netmask=str(netmask) if netmask is not None else None,
            )
        )
    return found


def dests(ipvs: Handle, service: Service) -> list[Dest]:
    found = []
    for msg in ipvs.dest("dump", service=_svc_key(service.af, service.fwmark)):
        attrs = msg.get("IPVS_CMD_ATTR_DEST")
        found.append(
            Dest(
                addr=str(attrs.get("IPVS_DEST_ATTR_ADDR")),
                port=int(attrs.get("IPVS_DEST_ATTR_PORT") or 0),
                weight=int(attrs.get("IPVS_DEST_ATTR_WEIGHT") or 0),
                fwd=int(attrs.get("IPVS_DEST_ATTR_FWD_METHOD") or 0),
            )
        )
    return found


def read(ipvs: Handle) -> dict[int, tuple[Backend, ...]]:
    """fwmark -> backends, for our IPv4 services (what ``ipvsadm -Ln`` shows)."""
    out: dict[int, tuple[Backend, ...]] = {}
    for svc in services(ipvs):
        if svc.af != socket.AF_INET:
            continue
        backends = {
            Backend(ipaddress.IPv4Address(d.addr), d.weight)
            for d in dests(ipvs, svc)
            if d.port == 0
        }
        out[svc.fwmark] = tuple(sorted(backends))
    return out


def converge(ipvs: Handle, state: SandboxState) -> list[str]:
    """Add and update the services and destinations of ``state``; what changed.

    Services of ours that ``state`` does not hold are left for ``remove_stale``, so
    the caller can stop marking their traffic first.
    """
    changes: list[str] = []
    have = {(s.af, s.fwmark): s for s in services(ipvs)}
    for vs in state:
        current = have.get((socket.AF_INET, vs.fwmark))
        if current is None:
            ipvs.service("add", service=_svc_full(vs.fwmark))
            changes.append(f"service {vs.fwmark:#x} added")
            current = Service(socket.AF_INET, vs.fwmark, SCHEDULER, HOST_MASK)
            existing: dict[str, Dest] = {}
        else:
            if current.sched != SCHEDULER or current.netmask != HOST_MASK:
                ipvs.service("set", service=_svc_full(vs.fwmark))
                changes.append(f"service {vs.fwmark:#x} set to {SCHEDULER}")
            existing = {}
            for d in dests(ipvs, current):
                if d.port != 0:  # a server port of someone else's making: ours use 0
                    key = _svc_key(current.af, vs.fwmark)
                    ipvs.dest("del", service=key, dest=_dest(d.addr, port=d.port))
                    changes.append(f"service {vs.fwmark:#x}: {d.addr}:{d.port} removed")
                else:
                    existing[d.addr] = d
        key = _svc_key(socket.AF_INET, vs.fwmark)
        wanted = {str(b.ip): b.weight for b in vs.backends}
        for addr, weight in wanted.items():
            had = existing.get(addr)
            if had is None:
                ipvs.dest("add", service=key, dest=_dest(addr, weight))
                changes.append(f"service {vs.fwmark:#x}: {addr} added (weight {weight})")
            elif had.weight != weight or had.fwd != MASQ:
                ipvs.dest("set", service=key, dest=_dest(addr, weight))
                changes.append(f"service {vs.fwmark:#x}: {addr} weight {weight}")
        for addr in existing.keys() - wanted.keys():
            ipvs.dest("del", service=key, dest=_dest(addr))
            changes.append(f"service {vs.fwmark:#x}: {addr} removed")
    return changes


def remove_stale(ipvs: Handle, state: SandboxState) -> list[str]:
    """Delete our services that ``state`` does not hold (all of ours when it is empty)."""
    wanted = {(socket.AF_INET, vs.fwmark) for vs in state}
    changes = []
    for svc in services(ipvs):
        if (svc.af, svc.fwmark) not in wanted:
            ipvs.service("del", service=_svc_key(svc.af, svc.fwmark))
            changes.append(f"service {svc.fwmark:#x} (IPv{_AF.get(svc.af, svc.af)}) removed")
    return changes
