"""Node side, pure: what every local sandbox should hold, from the records and the joins.

A sandbox (one container's network namespace) joined to some of our networks gets
the virtual services of every service record on those networks. A task reaching
its own service is one of them: its own IP stays a backend (the kernel adapter
programs the hairpin route that makes that work).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

from driver.lb.model import SandboxState, ServiceRecord, sandbox_state


def by_network(records: Iterable[ServiceRecord]) -> dict[str, list[ServiceRecord]]:
    out: dict[str, list[ServiceRecord]] = {}
    for rec in records:
        out.setdefault(rec.network_id, []).append(rec)
    return out


def desired_states(
    records: Iterable[ServiceRecord], sandboxes: Mapping[str, Set[str]]
) -> dict[str, SandboxState]:
    """Sandbox key -> the state it should hold, for every sandbox in ``sandboxes``
    (sandbox key -> IDs of our networks it is joined to). A sandbox with no service on
    its networks maps to the empty state, so whatever it held is removed.

    Two records that would put one fwmark or one VIP twice into a sandbox cannot
    both be honoured; the first by (network, service) wins and the clash is left out
    deterministically, so every node makes the same choice.
    """
    per_network = by_network(records)
    out: dict[str, SandboxState] = {}
    for key, networks in sandboxes.items():
        chosen = []
        marks: set[int] = set()
        vips: set[object] = set()
        candidates = sorted(
            (r for n in networks for r in per_network.get(n, ())),
            key=lambda r: (r.network_id, r.service_id),
        )
        for rec in candidates:
            if rec.fwmark in marks or rec.vip in vips:
                continue
            marks.add(rec.fwmark)
            vips.add(rec.vip)
            chosen.append(rec.virtual_service())
        out[key] = sandbox_state(chosen)
    return out
