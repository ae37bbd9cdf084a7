"""The relay's copy of one etcd prefix, and the watch streams it feeds.

Confined to the relay's event loop (the upstream thread hands over with
``call_soon_threadsafe``), so it takes no lock.

Every watch response from etcd is framed once, as an HTTP chunk of the very line etcd sent,
and those bytes go to every subscriber: the relay's cost per event per node is one socket
write, not a JSON encoding. A subscriber that asked for a later revision than a response
starts at (a node that listed another relay, ahead of this one) gets only the events it
lacks. The last ``HISTORY`` responses are kept, so a node that listed at revision R and
opens its watch at R+1 a moment later misses nothing; older than that, it is told the
revision is compacted, as etcd would tell it, and lists again.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

HISTORY = 1024  # watch responses kept for watches that start a little in the past
# Seconds between progress lines on every stream. A relay that dies without closing its
# connections (a host that stops) would leave its nodes following a copy that no longer
# changes; with a line at least this often, a node that hears nothing for IDLE_TIMEOUT
# lists again from its next relay.
HEARTBEAT = 5.0
IDLE_TIMEOUT = 3 * HEARTBEAT


class Subscriber(Protocol):
    start: int  # the first revision this watch still needs

    def send(self, chunk: bytes) -> bool:
        """Queue ``chunk``; False when the subscriber is gone or was cut for being slow."""

    def end(self) -> None:
        """Finish the stream: the node lists again."""


def frame(line: bytes) -> bytes:
    """One line of a watch stream as an HTTP/1.1 chunk."""
    data = line + b"\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _revision(event: Mapping[str, Any]) -> int:
    return int(event["kv"].get("mod_revision", 0))


class Feed:
    def __init__(self, prefix: str, history: int = HISTORY) -> None:
        self.prefix = prefix
        self.ready = False
        self.revision = 0  # every event up to here is applied (and none after)
        self.base = 0  # the history holds every response after this revision
        self._header: dict[str, Any] = {}
        self._kvs: dict[str, Any] = {}  # base64 key -> the kv as etcd sent it
        self._history: deque[tuple[int, int, list[Any], bytes]] = deque()
        self._history_size = history
        self._range_body: bytes | None = None
        self.subscribers: set[Subscriber] = set()
        # Counters for /metrics.
        self.responses = 0
        self.events = 0
        self.lists = 0
        self.resets = 0

    @property
    def records(self) -> int:
        return len(self._kvs)

    # -- from upstream ---------------------------------------------------------------

    def reset(self, listing: Mapping[str, Any]) -> None:
        """A fresh listing of the prefix. Every open stream ends (its node lists again):
        what happened between the old state and this one is not known event by event."""
        self._header = dict(listing.get("header", {}))
        self._kvs = {kv["key"]: kv for kv in listing.get("kvs", [])}
        self.revision = self.base = int(self._header.get("revision", 0))
        self._history.clear()
        self._range_body = None
        self.ready = True
        self.resets += 1
        self._end_all()

    def lost(self) -> None:
        """Upstream is gone: refuse lists and end the streams, so nodes go to another relay."""
        self.ready = False
        self._range_body = None
        self._end_all()

    def apply(self, result: Mapping[str, Any], line: bytes) -> None:
        """One watch response from etcd, with the line it came in."""
        events = list(result.get("events", []))
        if not events:
            return
        for event in events:
            kv = event["kv"]
            if event.get("type") == "DELETE":
                self._kvs.pop(kv["key"], None)
            else:
                self._kvs[kv["key"]] = kv
        first = min(_revision(e) for e in events)
        last = max(_revision(e) for e in events)
        self.revision = max(self.revision, last)
        self._header = dict(result.get("header", self._header))
        self._range_body = None
        chunk = frame(line)
        self._history.append((first, last, events, chunk))
        while len(self._history) > self._history_size:
            self.base = self._history.popleft()[1]
        self.responses += 1
        self.events += len(events)
        for sub in list(self.subscribers):
            self._send(sub, first, last, events, chunk)

    # -- to nodes --------------------------------------------------------------------

    def range_body(self) -> bytes:
        """The answer to a range over the whole prefix, at ``revision`` (made once per
        revision: after a relay restart every node lists at about the same time)."""
        self.lists += 1
        if self._range_body is None:
            kvs = sorted(self._kvs.values(), key=lambda kv: str(kv["key"]))
            body = {"header": self._header_at(self.revision), "kvs": kvs, "count": str(len(kvs))}
            self._range_body = json.dumps(body, separators=(",", ":")).encode()
        return self._range_body

    def created(self) -> bytes:
        line = {"result": {"header": self._header_at(self.revision), "created": True}}
        return frame(json.dumps(line, separators=(",", ":")).encode())

    def compacted(self) -> bytes:
        """etcd's answer to a watch that starts before what it still has."""
        result = {
            "header": self._header_at(self.revision),
            "compact_revision": str(self.base + 1),
            "canceled": True,
        }
        return frame(json.dumps({"result": result}, separators=(",", ":")).encode())

    def heartbeat(self) -> None:
        """A progress line (no events, the copy's revision) on every stream."""
        line = {"result": {"header": self._header_at(self.revision)}}
        chunk = frame(json.dumps(line, separators=(",", ":")).encode())
        for sub in list(self.subscribers):
            if not sub.send(chunk):
                self.subscribers.discard(sub)

    def covers(self, start: int) -> bool:
        """Whether every event from revision ``start`` on can still be delivered."""
        return start > self.base or start > self.revision

    def subscribe(self, sub: Subscriber) -> None:
        """Replay what ``sub`` lacks from the history, then follow live. The caller checked
        ``covers(sub.start)`` and sent ``created()``."""
        for first, last, events, chunk in self._history:
            if not self._send(sub, first, last, events, chunk):
                return
        self.subscribers.add(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _send(
        self, sub: Subscriber, first: int, last: int, events: list[Any], chunk: bytes
    ) -> bool:
        if sub.start > last:
            return True
        if sub.start > first:
            wanted = [e for e in events if _revision(e) >= sub.start]
            line = {"result": {"header": self._header_at(last), "events": wanted}}
            chunk = frame(json.dumps(line, separators=(",", ":")).encode())
        if sub.send(chunk):
            return True
        self.subscribers.discard(sub)
        return False

    def _header_at(self, revision: int) -> dict[str, Any]:
        return {**self._header, "revision": str(revision)}

    def _end_all(self) -> None:
        subs, self.subscribers = self.subscribers, set()
        for sub in subs:
            sub.end()
