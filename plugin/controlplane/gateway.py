"""The calls to etcd's v3 JSON gateway that ``EtcdKV`` does not offer: leases, and
transactions written in batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plugin.store.etcd import EtcdKV, b64

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
