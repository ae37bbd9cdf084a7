"""The shared store across hosts: etcd v3 through its JSON gateway (etcd3gw).

``update`` is a compare-and-swap loop: take the key's value and mod revision,
let the caller compute the new value, and commit only if nobody changed the
key in between; otherwise take the current value and retry. That is what keeps
VNI and IPAM allocation unique across swarm managers. The value it starts from
is the one this process saw last (``etcd_cache``), so the steady state costs
one round trip per update instead of a read plus a txn.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core.errors import Unavailable
from plugin.settings import SettingsError
from plugin.store.etcd_cache import Seen, SeenCache

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 64
# Keys whose last value ``update`` remembers: the IPAM index and pool records,
# the VNI and IPsec tables. Past that, the least recently used costs a read.
CACHE_SIZE = 512


class StoreUnavailable(Unavailable):
    """etcd could not be reached. The data path keeps working; control-plane calls fail."""


class StoreConflict(Unavailable):
    """Compare-and-swap kept losing: far more contention than this store should see."""


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
    for name, path in (("ETCD_CA", tls.ca), ("ETCD_CERT", tls.cert), ("ETCD_KEY", tls.key)):
        # requests would only fail at the first call, with a bare OSError.
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"{name}={path[:200]!r}: the file is missing or not readable")
    if bool(tls.cert) != bool(tls.key):
        raise SettingsError("ETCD_CERT and ETCD_KEY: a client certificate needs both")
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
        cache_size: int = CACHE_SIZE,
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
        self._seen = SeenCache(cache_size)

    # -- endpoint failover -------------------------------------------------

    def call(self, fn: Callable[[Any], Any], *, idempotent: bool = True) -> Any:
        """Run ``fn(client)`` on the first endpoint that answers.

        A request that is not ``idempotent`` (a txn that writes) goes to the next
        endpoint only when it was certainly never sent (the connection could not
        be made). After a timeout or a dropped connection it may have been
        applied: sending it again could apply it twice, or make ``update`` run
        its function on its own write. The caller gets StoreUnavailable instead.
        """
        from etcd3gw import exceptions

        errors: list[str] = []
        refused = tls = False
        with self._lock:
            start = self._current
        for i in range(len(self._clients)):
            idx = (start + i) % len(self._clients)
            try:
                result = fn(self._clients[idx])
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError) as e:
                cause = _transport_error(e)
                if cause == "tls":
                    tls = True
                    errors.append(f"{self.endpoints[idx]}: TLS handshake failed ({_brief(e)})")
                    continue
                errors.append(f"{self.endpoints[idx]}: {type(e).__name__}")
                if cause != "not sent" and not idempotent:
                    raise StoreUnavailable(
                        "etcd did not answer a write (" + "; ".join(errors) + "); it may have "
                        "been applied, so it was not sent again"
                    ) from None
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
        if tls and not refused:
            what = "the TLS handshake with etcd failed (check ETCD_CA, ETCD_CERT, ETCD_KEY)"
        else:
            what = "etcd refused the request" if refused else "etcd is unreachable"
        raise StoreUnavailable(f"{what} (" + "; ".join(errors) + ")")

    # -- KV port -----------------------------------------------------------

    def _post(self, path: str, payload: dict[str, Any], idempotent: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            lambda c: c.post(c.get_url(path), json=payload), idempotent=idempotent
        )
        return result

    def _range(self, key: str, range_end: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            payload["range_end"] = b64(range_end)
        return self._post("/kv/range", payload)

    def get_with_revision(self, key: str) -> tuple[bytes | None, int]:
        seen = _seen(self._range(key))
        self._seen.remember(key, seen, add=False)
        return seen.value, seen.mod_revision

    def get(self, key: str) -> bytes | None:
        return self.get_with_revision(key)[0]

    def list(self, prefix: str) -> dict[str, bytes]:
        out = {}
        for kv in self._range(prefix, prefix_end(prefix)).get("kvs", []):
            out[base64.b64decode(kv["key"]).decode()] = base64.b64decode(kv.get("value", ""))
        return dict(sorted(out.items()))

    def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        payload: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            payload["lease"] = lease
        at = _revision(self._post("/kv/put", payload))
        self._seen.remember(key, Seen(bytes(value), at, at), add=False)

    def delete(self, key: str) -> None:
        at = _revision(self._post("/kv/deleterange", {"key": b64(key)}))
        self._seen.remember(key, Seen(None, 0, at), add=False)

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """Compare-and-swap, starting from the copy of ``key`` this process saw last.

        One round trip when that copy is current. When it is not, the failed txn
        returns the current value, so the retry needs no read either. ``fresh``
        tells whether ``seen`` came from etcd during this call: a decision that
        writes nothing (``fn`` returns the value unchanged, or raises) is
        trusted only on fresh data; on a cached copy it is confirmed with a txn
        that compares the revision and changes nothing.
        """
        seen = self._seen.get(key)
        fresh = seen is None
        if seen is None:
            seen = _seen(self._range(key))
            self._seen.remember(key, seen)
        for attempt in range(MAX_ATTEMPTS):
            try:
                new = fn(seen.value)
            except Exception:
                if fresh:
                    raise
                confirmed, seen = self._commit(key, seen, None, write=False)
                if confirmed:
                    raise
                fresh = True
                continue
            write = new != seen.value
            if not write and fresh:
                return new
            committed, now = self._commit(key, seen, new, write=write)
            if committed:
                return new
            if fresh:
                # Someone else changed the key: back off a little and try again.
                time.sleep(min(0.2, 0.002 * (2 ** min(attempt, 6))) * random.random())
            seen, fresh = now, True
        raise StoreConflict(f"{key}: gave up after {MAX_ATTEMPTS} compare-and-swap conflicts")

    def _commit(self, key: str, seen: Seen, new: bytes | None, *, write: bool) -> tuple[bool, Seen]:
        """One txn: if ``key`` is still at ``seen``'s revision, write ``new`` (if
        ``write``); otherwise read it. Returns (committed, what the key is now)."""
        k = b64(key)
        # A missing key compares as mod revision 0, so this also guards creation.
        compare = {"key": k, "result": "EQUAL", "target": "MOD", "mod_revision": seen.mod_revision}
        success: list[dict[str, Any]] = []
        if write and new is None:
            success = [{"request_delete_range": {"key": k}}]
        elif write:
            success = [{"request_put": {"key": k, "value": b64(new or b"")}}]
        txn = {"compare": [compare], "success": success, "failure": [{"request_range": {"key": k}}]}
        try:
            # A txn that writes must never be sent twice: see ``call``.
            result = self._post("/kv/txn", txn, idempotent=not write)
        except StoreUnavailable:
            # The txn may or may not have been applied: drop the copy, read next time.
            self._seen.forget(key)
            raise
        at = _revision(result)
        if not result.get("succeeded"):
            responses = result.get("responses") or [{}]
            now = _seen(responses[0].get("response_range", {}), at)
        elif not write:
            now = Seen(seen.value, seen.mod_revision, at)
        elif new is None:
            now = Seen(None, 0, at)
        else:
            # A txn's writes all carry the revision it created.
            now = Seen(bytes(new), at, at)
        self._seen.remember(key, now)
        return bool(result.get("succeeded")), now


def _transport_error(e: BaseException) -> str:
    """What an etcd3gw connection error was: "tls", "not sent" (no connection), or "maybe sent".

    etcd3gw raises its errors inside ``except`` blocks for requests', so the
    original is the exception's context.
    """
    import requests
    import urllib3

    original = e.__context__
    if isinstance(original, requests.exceptions.SSLError):
        return "tls"
    if isinstance(original, requests.exceptions.ConnectTimeout):
        return "not sent"
    if isinstance(original, requests.exceptions.ConnectionError):
        reason = getattr(original.args[0], "reason", None) if original.args else None
        if isinstance(reason, urllib3.exceptions.SSLError):
            return "tls"
        if isinstance(reason, (urllib3.exceptions.NewConnectionError,
                               urllib3.exceptions.ConnectTimeoutError)):
            return "not sent"
    return "maybe sent"


def _brief(e: BaseException) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:200] + "..."


def _revision(response: dict[str, Any]) -> int:
    return int(response.get("header", {}).get("revision", 0))


def _seen(range_response: dict[str, Any], at: int | None = None) -> Seen:
    """A range response for one key (kvs is left out when the key is absent)."""
    at = _revision(range_response) if at is None else at
    kvs = range_response.get("kvs") or []
    if not kvs:
        return Seen(None, 0, at)
    return Seen(base64.b64decode(kvs[0].get("value", "")), int(kvs[0]["mod_revision"]), at)
