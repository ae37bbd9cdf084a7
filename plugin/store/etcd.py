"""The shared store across hosts: etcd v3 through its JSON gateway (etcd3gw).

``update`` is a compare-and-swap loop: read the key with its mod revision, let
the caller compute the new value, and commit only if nobody changed the key
in between; otherwise read again and retry. That is what keeps VNI and IPAM
allocation unique across swarm managers.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 64


class StoreUnavailable(Exception):
    """etcd could not be reached. The data path keeps working; control-plane calls fail."""

    http_status = 503


class StoreConflict(Exception):
    """Compare-and-swap kept losing: far more contention than this store should see."""

    http_status = 503


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def prefix_end(prefix: str) -> str:
    """The etcd range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1]).decode("latin-1")
    return "\0"


@dataclass(frozen=True)
class EtcdTLS:
    ca: str = ""
    cert: str = ""
    key: str = ""


def _session(tls: EtcdTLS) -> Any:
    import requests

    session = requests.Session()
    # Only our settings count: REQUESTS_CA_BUNDLE or a proxy in the environment
    # must not silently replace ETCD_CA or route etcd traffic elsewhere.
    session.trust_env = False
    if tls.ca:
        session.verify = tls.ca
    if tls.cert and tls.key:
        session.cert = (tls.cert, tls.key)
    return session


class EtcdKV:
    def __init__(
        self,
        endpoints: Sequence[str],
        tls: EtcdTLS | None = None,
        timeout: float = 5.0,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("ETCD_ENDPOINTS: at least one endpoint is needed")
        if client_factory is None:
            from etcd3gw.client import Etcd3Client

            client_factory = Etcd3Client
        tls = tls or EtcdTLS()
        self._clients: list[Any] = []
        self.endpoints = tuple(endpoints)
        for url in endpoints:
            parts = urlsplit(url)
            self._clients.append(
                client_factory(
                    host=parts.hostname or "localhost",
                    port=parts.port or 2379,
                    protocol=parts.scheme or "http",
                    timeout=timeout,
                    session=_session(tls),
                )
            )
        self._current = 0
        self._lock = threading.Lock()

    # -- endpoint failover -------------------------------------------------

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(client)`` on the first endpoint that answers."""
        from etcd3gw import exceptions

        errors: list[str] = []
        refused = False
        with self._lock:
            start = self._current
        for i in range(len(self._clients)):
            idx = (start + i) % len(self._clients)
            try:
                result = fn(self._clients[idx])
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError) as e:
                errors.append(f"{self.endpoints[idx]}: {type(e).__name__}")
                continue
            except exceptions.Etcd3Exception as e:
                # It answered, but refused: say so, this is not an outage.
                refused = True
                errors.append(f"{self.endpoints[idx]}: {type(e).__name__} {e}".strip())
                continue
            if idx != start:
                with self._lock:
                    self._current = idx
            return result
        what = "etcd refused the request" if refused else "etcd is unreachable"
        raise StoreUnavailable(f"{what} (" + "; ".join(errors) + ")")

    # -- KV port -----------------------------------------------------------

    def _range(self, key: str, range_end: str | None = None) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            payload["range_end"] = b64(range_end)
        result = self.call(lambda c: c.post(c.get_url("/kv/range"), json=payload))
        kvs: list[dict[str, Any]] = result.get("kvs", [])
        return kvs

    def get_with_revision(self, key: str) -> tuple[bytes | None, int]:
        kvs = self._range(key)
        if not kvs:
            return None, 0
        return base64.b64decode(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])

    def get(self, key: str) -> bytes | None:
        return self.get_with_revision(key)[0]

    def list(self, prefix: str) -> dict[str, bytes]:
        out = {}
        for kv in self._range(prefix, prefix_end(prefix)):
            out[base64.b64decode(kv["key"]).decode()] = base64.b64decode(kv.get("value", ""))
        return dict(sorted(out.items()))

    def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        payload: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            payload["lease"] = lease
        self.call(lambda c: c.post(c.get_url("/kv/put"), json=payload))

    def delete(self, key: str) -> None:
        payload = {"key": b64(key)}
        self.call(lambda c: c.post(c.get_url("/kv/deleterange"), json=payload))

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        for attempt in range(MAX_ATTEMPTS):
            current, revision = self.get_with_revision(key)
            new = fn(current)
            if new == current:
                return new
            compare = [
                {"key": b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": revision}
            ]
            if new is None:
                success = [{"request_delete_range": {"key": b64(key)}}]
            else:
                success = [{"request_put": {"key": b64(key), "value": b64(new)}}]
            txn: dict[str, Any] = {"compare": compare, "success": success, "failure": []}

            def commit(c: Any, t: dict[str, Any] = txn) -> Any:
                return c.post(c.get_url("/kv/txn"), json=t)

            result = self.call(commit)
            if result.get("succeeded"):
                return new
            # Someone else changed the key: back off a little and try again.
            time.sleep(min(0.2, 0.002 * (2 ** min(attempt, 6))) * random.random())
        raise StoreConflict(f"{key}: gave up after {MAX_ATTEMPTS} compare-and-swap conflicts")
