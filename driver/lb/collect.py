"""Manager side, pure: Docker's service and task view -> one ``ServiceRecord`` per VIP.

Input is Engine API JSON as ``docker.APIClient.services()`` and ``.tasks()`` return it;
nothing here does I/O. Two steps, because the fwmarks in between come from a table in
the shared store that only ``KV.update`` (compare-and-swap) may change:

1. ``targets(services, ours)``: every (network, service) whose VIP is on one of our
   networks. ``dnsrr`` services have no VIP and give none.
2. ``records(targets, tasks, marks)``: each target with its fwmark and its backends.

The fwmark table (``MarkTable``) maps each (network, service) to an index, stable for
as long as the record lives, smallest free index first, freed when the record goes.
The index is global rather than per network: a container on two of our networks holds
the virtual services of both, keyed by fwmark.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from core.errors import Exhausted
from driver.lb.model import MARK_MAX_INDEX, ServiceRecord, mark, virtual_service

MARKS_FORMAT = 1

# A task still running whose desired state is one of these is being stopped: Docker
# drains it first, so it keeps its open connections but gets no new ones (weight 0).
DRAINING = frozenset({"shutdown", "remove"})

TargetKey = tuple[str, str]  # (network id, service id)


@dataclass(frozen=True, order=True)
class Target:
    """One service VIP on one of our networks: what needs a record."""

    network_id: str
    service_id: str
    name: str
    vip: ipaddress.IPv4Address

    @property
    def key(self) -> TargetKey:
        return (self.network_id, self.service_id)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ipv4(addr: Any) -> ipaddress.IPv4Address | None:
    """The address of a CIDR string such as ``10.0.1.2/24`` (Docker's form), if IPv4."""
    if not isinstance(addr, str) or not addr:
        return None
    try:
        iface = ipaddress.ip_interface(addr)
    except ValueError:
        return None
    return iface.ip if isinstance(iface.ip, ipaddress.IPv4Address) else None


def endpoint_mode(service: Mapping[str, Any]) -> str:
    """``vip`` or ``dnsrr``; Docker leaves the mode out when it is the default, vip."""
    mode = _dict(_dict(service.get("Spec")).get("EndpointSpec")).get("Mode")
    return str(mode) if mode else "vip"


def targets(services: Iterable[Mapping[str, Any]], ours: Set[str]) -> list[Target]:
    """Every (network, service) with a VIP on one of ``ours``, sorted."""
    out: dict[TargetKey, Target] = {}
    for svc in services:
        service_id = svc.get("ID")
        if not isinstance(service_id, str) or not service_id or endpoint_mode(svc) != "vip":
            continue
        name = str(_dict(svc.get("Spec")).get("Name") or "")
        for entry in _list(_dict(svc.get("Endpoint")).get("VirtualIPs")):
            network_id = _dict(entry).get("NetworkID")
            vip = _ipv4(_dict(entry).get("Addr"))
            if network_id in ours and vip is not None:
                t = Target(str(network_id), service_id, name, vip)
                out.setdefault(t.key, t)
    return sorted(out.values())


def task_addresses(task: Mapping[str, Any]) -> dict[str, ipaddress.IPv4Address]:
    """Network id -> the task's IPv4 address on it."""
    out: dict[str, ipaddress.IPv4Address] = {}
    for att in _list(task.get("NetworksAttachments")):
        network_id = _dict(_dict(att).get("Network")).get("ID")
        if not isinstance(network_id, str):
            continue
        for addr in _list(_dict(att).get("Addresses")):
            ip = _ipv4(addr)
            if ip is not None:
                out.setdefault(network_id, ip)
                break
    return out


def task_weight(task: Mapping[str, Any]) -> int | None:
    """1 for a running task meant to run, 0 for one running but being stopped, else None."""
    if _dict(task.get("Status")).get("State") != "running":
        return None
    desired = task.get("DesiredState")
    if desired == "running":
        return 1
    if desired in DRAINING:
        return 0
    return None


def down_nodes(nodes: Iterable[Mapping[str, Any]]) -> set[str]:
    """IDs of the nodes the managers see as down.

    Their tasks still show as running (nobody can report them stopped) until the node
    returns or swarm gives up on them, but their addresses answer nothing: they are
    no backends. Docker's own overlay drops them when gossip loses the node.
    """
    return {
        str(n.get("ID"))
        for n in nodes
        if _dict(n.get("Status")).get("State") == "down" and n.get("ID")
    }


def backends_by_target(
    tasks: Iterable[Mapping[str, Any]],
    down: Set[str] = frozenset(),
) -> dict[TargetKey, dict[ipaddress.IPv4Address, int]]:
    """(network, service) -> {backend IP: weight} over every task that counts: running,
    and not on a node that is down."""
    out: dict[TargetKey, dict[ipaddress.IPv4Address, int]] = {}
    for task in tasks:
        weight = task_weight(task)
        service_id = task.get("ServiceID")
        if weight is None or not isinstance(service_id, str) or task.get("NodeID") in down:
            continue
        for network_id, ip in task_addresses(task).items():
            backends = out.setdefault((network_id, service_id), {})
            # Two tasks with one address (an old one not yet gone): the live one wins.
            backends[ip] = max(weight, backends.get(ip, 0))
    return out


def records(
    wanted: Iterable[Target],
    tasks: Iterable[Mapping[str, Any]],
    marks: Mapping[TargetKey, int],
    down: Set[str] = frozenset(),
) -> list[ServiceRecord]:
    """The record of every target, sorted by key. Every target must have a mark."""
    by_target = backends_by_target(tasks, down)
    out = []
    for t in wanted:
        vs = virtual_service(t.vip, mark(marks[t.key]), by_target.get(t.key, {}))
        out.append(
            ServiceRecord(
                network_id=t.network_id,
                service_id=t.service_id,
                name=t.name,
                vip=t.vip,
                fwmark=vs.fwmark,
                backends=vs.backends,
            )
        )
    return sorted(out, key=lambda r: (r.network_id, r.service_id))


# --------------------------------------------------------------------------- fwmarks


@dataclass(frozen=True)
class MarkTable:
    """(network id, service id) -> fwmark index (1..MARK_MAX_INDEX), kept at ``<root>/lb/marks``."""

    by_target: Mapping[TargetKey, int]

    @classmethod
    def load(cls, raw: bytes | None) -> MarkTable:
        if raw is None:
            return cls({})
        d = json.loads(raw)
        if int(d.get("v", 0)) > MARKS_FORMAT:
            # Changing a table we cannot read could hand out an index twice.
            raise ValueError(f"fwmark table: format {d.get('v')} is newer than this version")
        table: dict[TargetKey, int] = {}
        for key, index in d.get("marks", {}).items():
            network_id, _, service_id = str(key).partition("/")
            table[(network_id, service_id)] = int(index)
        return cls(table)

    def dump(self) -> bytes:
        marks = {f"{n}/{s}": i for (n, s), i in sorted(self.by_target.items())}
        return json.dumps({"v": MARKS_FORMAT, "marks": marks}, sort_keys=True).encode()

    def assign(self, wanted: Set[TargetKey]) -> MarkTable:
        """Exactly ``wanted``: known targets keep their index, gone ones free theirs,
        new ones (in sorted order) take the smallest free index."""
        kept = {k: i for k, i in self.by_target.items() if k in wanted}
        used = set(kept.values())
        free = (i for i in range(1, MARK_MAX_INDEX + 1) if i not in used)
        for key in sorted(wanted - kept.keys()):
            index = next(free, None)
            if index is None:
                raise Exhausted(
                    f"load balancing: more than {MARK_MAX_INDEX} service VIPs on our networks"
                )
            kept[key] = index
        return MarkTable(kept)


def assign_marks(wanted: Set[TargetKey]) -> Callable[[bytes | None], bytes | None]:
    """The pure ``KV.update`` function that makes the fwmark table hold ``wanted``.

    Returns the stored value unchanged when nothing changes (no write), and deletes the
    key when no target is left.
    """

    def change(raw: bytes | None) -> bytes | None:
        old = MarkTable.load(raw)
        new = old.assign(wanted)
        if new.by_target == old.by_target:
            return raw
        return new.dump() if new.by_target else None

    return change
