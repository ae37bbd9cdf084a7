"""The calls to etcd's v3 JSON gateway that ``EtcdKV`` does not offer: leases,
transactions written in batches, and listing and watching a prefix (the watcher's and the
relay's)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from plugin.store.etcd import EtcdKV, b64, prefix_end

TXN_BATCH = 64  # operations per etcd transaction (etcd's default limit is 128)


def grant(kv: EtcdKV, ttl: int) -> int:
    """A new lease of ``ttl`` seconds; its ID."""
    payload = {"TTL": ttl, "ID": 0}
    result = kv.call(lambda c: c.post(c.get_url("/lease/grant"), json=payload))
    return int(result["ID"])


def keepalive(kv: EtcdKV, lease: int) -> int:
    """Refresh ``lease``; the TTL it has left, or a value <= 0 when it is gone."""
    result = kv.call(lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": lease}))
    return int(result.get("result", {}).get("TTL", -1))


def put_op(key: str, value: bytes, lease: int) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}


def delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def commit(
    kv: EtcdKV, ops: Sequence[dict[str, Any]], compare: Sequence[dict[str, Any]] = ()
) -> bool:
    """Write ``ops`` in transactions of TXN_BATCH, each guarded by ``compare``.

    False as soon as one batch's guard fails (nothing after it is written); without a
    guard every batch is written.
    """
    for start in range(0, len(ops), TXN_BATCH):
        txn = {
            "compare": list(compare),
            "success": list(ops[start : start + TXN_BATCH]),
            "failure": [],
        }

        def call(c: Any, t: dict[str, Any] = txn) -> Any:
            return c.post(c.get_url("/kv/txn"), json=t)

        result = kv.call(call)
        if compare and not result.get("succeeded"):
            return False
    return True


@contextlib.contextmanager
def transport_errors() -> Iterator[None]:
    """A raw ``requests`` call in ``EtcdKV.call``: its failures as etcd3gw's, so that
    ``call`` moves on to the next endpoint as it does for the client's own calls."""
    import requests
    from etcd3gw import exceptions

    try:
        yield
    except requests.exceptions.Timeout as e:
        raise exceptions.ConnectionTimeoutError(str(e)) from e
    except requests.exceptions.ConnectionError as e:
        raise exceptions.ConnectionFailedError(str(e)) from e


class WatchStream:
    """One watch on ``[prefix, prefix_end)`` from ``start_revision``, through the gateway.

    Iterating yields each watch response's ``result`` with the raw line it came in (the
    relay forwards the line as it is). It raises on an error or a cancel (a compacted
    revision): the caller lists again. ``shut`` cuts it from another thread.
    """

    def __init__(
        self, kv: EtcdKV, prefix: str, start_revision: int, idle_timeout: float | None = None
    ) -> None:
        """``idle_timeout``: give up (the caller lists again) after that long without a line;
        only for a source that sends progress lines (a relay). etcd sends none by itself."""
        self._request = {
            "create_request": {
                "key": b64(prefix),
                "range_end": b64(prefix_end(prefix)),
                "start_revision": start_revision,
            }
        }
        self._kv = kv
        self._idle_timeout = idle_timeout
        self._resp: Any = None

    def __iter__(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        def open_stream(c: Any) -> Any:
            with transport_errors():
                return c.session.post(
                    c.get_url("/watch"),
                    json=self._request,
                    stream=True,
                    timeout=(5, self._idle_timeout),
                )

        self._resp = resp = self._kv.call(open_stream)
        try:
            if resp.status_code != 200:
                raise RuntimeError(f"watch refused: HTTP {resp.status_code} {resp.text[:200]}")
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                chunk = json.loads(line)
                if "error" in chunk:
                    raise RuntimeError(f"watch failed: {chunk['error']}")
                result = chunk.get("result", {})
                if result.get("canceled") or result.get("compact_revision"):
                    raise RuntimeError("watch cancelled (compacted?)")
                yield result, line
        finally:
            self._resp = None
            resp.close()

    def shut(self) -> None:
        """Closing a requests response while a thread reads it blocks on the reader's lock,
        so shut the socket down instead: the reader then sees end-of-stream."""
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)


def list_prefix(kv: EtcdKV, prefix: str) -> dict[str, Any]:
    """The gateway's answer to a range over the whole prefix (``kvs``, ``header``)."""
    payload = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
    result: dict[str, Any] = kv.call(lambda c: c.post(c.get_url("/kv/range"), json=payload))
    return result
