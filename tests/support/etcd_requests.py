"""An etcd adapter that records every request it posts: round trips, counted."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from etcd3gw.client import Etcd3Client

from plugin.store.etcd import EtcdKV


@dataclass
class Requests:
    """The etcd v3 paths posted, in order (one entry per HTTP round trip)."""

    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> list[str]:
        with self.lock:
            taken, self.paths[:] = list(self.paths), []
        return taken


def counting_kv(url: str, log: Requests, **kwargs: Any) -> EtcdKV:
    class CountingClient(Etcd3Client):  # type: ignore[misc]
        def post(self, url: str, *args: Any, **kw: Any) -> Any:
            with log.lock:
                log.paths.append(urlsplit(url).path.split("/v3", 1)[-1])
            return super().post(url, *args, **kw)

    return EtcdKV([url], client_factory=CountingClient, **kwargs)
