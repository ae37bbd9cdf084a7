"""The start-up reconcile's change lines, sorted into a few kinds for a counter's label.

Reconciliation returns a line per change for the log (driver/service.py reconcile,
driver/encryption.py, ipam/service.py sweep); a metric needs a bounded label instead, so
the lines are matched here against their known shapes. A line of a shape not listed
counts as ``other``; tests/unit/test_metrics.py runs a real reconcile so a reworded line
shows up there.
"""

from __future__ import annotations

import re

_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("namespace_recreated", re.compile(r"^network \S+: recreated its namespace")),
    ("orphan_namespace", re.compile(r"^network \S+: removed orphan namespace")),
    ("network_broken", re.compile(r"^network \S+: broken")),
    ("orphan_vni", re.compile(r"^network \S+: released orphan VNI")),
    ("orphan_veth", re.compile(r"^endpoint \S+: removed orphan veth")),
    ("orphan_link", re.compile(r"^link \S+: removed orphan")),
    ("endpoint_withdrawn", re.compile(r"^endpoint \S+: not published")),
    ("ipsec_installed", re.compile(r"^ipsec: (installed|peer .*: sending with)")),
    ("ipsec_removed", re.compile(r"^ipsec: removed")),
    ("ipsec_failed", re.compile(r"^ipsec: programming peers failed")),
    ("orphan_pool", re.compile(r"^\S+ pool \S+: released")),
)

# Every label value the counter can take: the kinds above, peer entries repaired on a
# recheck (plugin.metrics.observer), and other.
REPAIR_KINDS = (*(kind for kind, _ in _KINDS), "peer_entries", "other")


def classify(line: str) -> str:
    for kind, pattern in _KINDS:
        if pattern.match(line):
            return kind
    return "other"
