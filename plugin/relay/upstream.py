"""The relay's one connection to etcd: list the prefix, follow it, hand both to the feed.

Runs in its own thread (the gateway client blocks) and hands every listing and watch
response to the event loop. When etcd fails, the feed is marked lost at once, so nodes
move to another relay instead of following a copy that no longer changes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from plugin.controlplane import gateway
from plugin.relay.feed import Feed
from plugin.store.etcd import EtcdKV

log = logging.getLogger(__name__)


class Upstream:
    def __init__(self, kv: EtcdKV, feed: Feed, loop: asyncio.AbstractEventLoop) -> None:
        self.kv = kv
        self.feed = feed
        self.loop = loop
        self.version: bytes = b""
        self.restarts = 0
        self._stop = threading.Event()
        self._stream: gateway.WatchStream | None = None
        self._thread = threading.Thread(target=self._run, name="relay-upstream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.shut()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if not self.version:
                    self.version = self._get_version()
                listing = gateway.list_prefix(self.kv, self.feed.prefix)
                self.loop.call_soon_threadsafe(self.feed.reset, listing)
                backoff = 0.2
                self._stream = gateway.WatchStream(
                    self.kv, self.feed.prefix, int(listing["header"]["revision"]) + 1
                )
                for result, line in self._stream:
                    if self._stop.is_set():
                        return
                    self.loop.call_soon_threadsafe(self.feed.apply, result, line)
                raise RuntimeError("etcd ended the watch stream")
            except Exception as e:
                if self._stop.is_set():
                    return
                self.restarts += 1
                log.warning("relay: following etcd failed (%s); listing again", e)
                self.loop.call_soon_threadsafe(self.feed.lost)
            finally:
                self._stream = None
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    def _get_version(self) -> bytes:
        """etcd's /version, served again to nodes: etcd3gw picks its API path from it."""

        def get(c: Any) -> bytes:
            with gateway.transport_errors():
                resp = c.session.get(c.base_url + "/version", timeout=5)
            if resp.status_code != 200:
                raise RuntimeError(f"etcd's /version: HTTP {resp.status_code}")
            return bytes(resp.content)

        body: bytes = self.kv.call(get)
        return body
