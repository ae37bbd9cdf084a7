"""Protocol calls by method and outcome, as a latency histogram: WSGI middleware around
the plugin's app, so every route is timed the same way, error map included."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram

from plugin.wsgi import observed

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

# Plugin calls take 1-50 ms; a Join under load or an etcd round trip, up to seconds.
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The method label takes these prefixes' calls by name (there are about 25); any other
# path is "other", so a client cannot grow the label without bound.
PREFIXES = ("/Plugin.", "/NetworkDriver.", "/IpamDriver.", "/Swarmnet.")


def outcome(status: str) -> str:
    """ok (2xx), rejected (4xx: the caller's request), failed (5xx and anything else)."""
    if status.startswith("2"):
        return "ok"
    if status.startswith("4"):
        return "rejected"
    return "failed"


class CallMetrics:
    def __init__(self, registry: CollectorRegistry, known: Iterable[str]) -> None:
        self._known = {p for p in known if p.startswith(PREFIXES)}
        self.calls = Histogram(
            "swarmnet_protocol_call_duration_seconds",
            "Time to answer a call on the plugin socket, by method (e.g. NetworkDriver.Join) "
            "and outcome (ok, rejected = 4xx, failed = 5xx).",
            ["method", "outcome"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )

    def method(self, path: str) -> str:
        return path[1:] if path in self._known else "other"

    def wrap(self, app: WSGIApplication) -> WSGIApplication:
        def count(environ: WSGIEnvironment, status: str, seconds: float) -> None:
            method = self.method(str(environ.get("PATH_INFO", "")))
            self.calls.labels(method, outcome(status)).observe(seconds)

        return observed(app, count, unanswered="500")
