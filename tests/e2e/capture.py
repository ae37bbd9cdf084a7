"""Request bodies that dockerd sends to the plugin, taken from the dockerd log.

The plugin logs every request body at LOG_LEVEL=debug (``DEBUG plugin.routes: /Path BODY``);
dockerd writes the plugin's stderr into its own log, one logrus line per plugin line. The e2e
tests wrap the steps worth keeping in :func:`capture`; with ``SWARMNET_CAPTURE_DIR`` set, each
body logged during the step is saved as ``<Method>.<case>.json`` (``Method`` without the
leading slash, e.g. ``NetworkDriver.CreateEndpoint.swarm-service.json``) for the unit tests
to replay. A second body of the same method in the same step is kept only when its shape
differs (other keys or option names), as ``<case>-2``, ``<case>-3``...
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.dockerhost import DockerHost

_LOGRUS = re.compile(r'msg="((?:[^"\\]|\\.)*)"(?: plugin=([0-9a-f]{64}))?')
_ROUTE = re.compile(r"DEBUG plugin\.routes: (/\S+) ?(.*)$")
ENV = "SWARMNET_CAPTURE_DIR"


def requests_in(log_text: str) -> list[tuple[str, str]]:
    """(path, raw body) of every request the plugin logged, in order."""
    found = []
    for line in log_text.splitlines():
        m = _LOGRUS.search(line)
        if not m or m.group(2) is None:
            continue
        try:
            msg = json.loads(f'"{m.group(1)}"')  # logrus quotes like Go's %q: JSON-compatible
        except json.JSONDecodeError:
            continue
        route = _ROUTE.search(msg)
        if route:
            found.append((route.group(1), route.group(2)))
    return found


def _shape(body: Any) -> Any:
    """Keys (recursively) and option names: what makes two bodies worth keeping both."""
    if isinstance(body, dict):
        return tuple(sorted((k, _shape(v)) for k, v in body.items()))
    if isinstance(body, list):
        return tuple(_shape(v) for v in body[:1])
    return type(body).__name__


def save(requests: list[tuple[str, str]], case: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    shapes: dict[str, list[Any]] = {}
    for path, raw in requests:
        if not raw.strip():
            continue  # argument-less calls (Plugin.Activate, GetCapabilities): empty body
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            continue
        method = path.lstrip("/")
        seen = shapes.setdefault(method, [])
        shape = _shape(body)
        if shape in seen:
            continue
        seen.append(shape)
        name = case if len(seen) == 1 else f"{case}-{len(seen)}"
        target = out / f"{method}.{name}.json"
        target.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        written.append(target)
    return written


@contextlib.contextmanager
def capture(host: DockerHost, case: str) -> Iterator[None]:
    """Save the bodies dockerd sends during the ``with`` block (when SWARMNET_CAPTURE_DIR is
    set); a no-op otherwise."""
    out = os.environ.get(ENV)
    start = host.log.stat().st_size if out and host.log.exists() else 0
    yield
    if not out:
        return
    time.sleep(0.5)  # the plugin's stderr reaches the dockerd log asynchronously
    with open(host.log, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    save(requests_in(text), case, Path(out))
