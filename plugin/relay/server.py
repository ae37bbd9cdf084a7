"""The relay's HTTP side: the part of etcd's v3 JSON gateway that a node's watcher uses.

    GET  /version        etcd's own answer (etcd3gw picks its API path from it)
    POST /v3/kv/range    the whole peers prefix, from the relay's copy
    POST /v3/watch       a watch on the peers prefix, from a start revision
    GET  /health         200 when the copy is current, 503 while etcd is out of reach
    GET  /metrics        Prometheus text: streams, revision, events, lists, cuts

Anything else is refused with a 4xx naming what is wrong; a node's writes, leases and
keep-alives go to etcd itself. One asyncio loop serves every connection: a watch stream
costs a socket and a set entry, not a thread. A stream whose node does not read (its
unsent bytes pass ``max_buffer``) is cut; that node lists again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from plugin.relay.feed import Feed
from plugin.store.etcd import b64, prefix_end

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # request line and headers
MAX_BODY = 64 * 1024  # a range or watch request is a few hundred bytes
MAX_BUFFER = 32 * 1024 * 1024  # unsent bytes per stream before it is cut
# gRPC status codes, which the gateway's error bodies carry.
INVALID_ARGUMENT, UNIMPLEMENTED, UNAVAILABLE = 3, 12, 14
NOT_CURRENT = "the relay's copy is not current: etcd is out of reach"


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Stream:
    """One node's watch: what the feed writes to."""

    def __init__(self, transport: asyncio.WriteTransport, start: int, max_buffer: int) -> None:
        self.start = start
        self._transport = transport
        self._max_buffer = max_buffer
        self.slow = False

    def send(self, chunk: bytes) -> bool:
        if self._transport.is_closing():
            return False
        if self._transport.get_write_buffer_size() > self._max_buffer:
            self.slow = True
            self._transport.abort()
            return False
        self._transport.write(chunk)
        return True

    def end(self) -> None:
        if not self._transport.is_closing():
            self._transport.write(b"0\r\n\r\n")
            self._transport.close()


class RelayServer:
    def __init__(self, feed: Feed, version: Any, max_buffer: int = MAX_BUFFER) -> None:
        """``version``: a callable giving etcd's /version body (known once upstream answered)."""
        self.feed = feed
        self._version = version
        self._max_buffer = max_buffer
        self._key = b64(feed.prefix)
        self._range_end = b64(prefix_end(feed.prefix))
        self.slow_cuts = 0
        self.refused = 0

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, ssl=tls, limit=MAX_HEAD)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await _read_request(reader)
                    if request is None:
                        return
                    method, path, body = request
                    if path == "/v3/watch" and method == "POST":
                        await self._watch(reader, writer, _json(body))
                        return
                    status, reply = self._answer(method, path, body)
                except BadRequest as e:
                    self.refused += 1
                    code = UNIMPLEMENTED if e.status in (404, 405) else INVALID_ARGUMENT
                    _reply(writer, e.status, _error(str(e), code), close=True)
                    return
                _reply(writer, status, reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/version":
            _only(method, "GET")
            version = self._version()
            if not version:
                return 503, _error("the relay has not reached etcd yet", UNAVAILABLE)
            return 200, version
        if path == "/health":
            _only(method, "GET")
            if self.feed.ready:
                return 200, b'{"health":"true"}'
            return 503, b'{"health":"false","reason":"etcd is out of reach"}'
        if path == "/metrics":
            _only(method, "GET")
            return 200, self._metrics().encode()
        if path == "/v3/kv/range":
            _only(method, "POST")
            self._check_range(_json(body))
            if not self.feed.ready:
                return 503, _error(NOT_CURRENT, UNAVAILABLE)
            return 200, self.feed.range_body()
        raise BadRequest(404, f"{path[:100]!r}: the relay serves only range and watch")

    def _check_range(self, req: Mapping[str, Any]) -> None:
        if req.get("key") != self._key or req.get("range_end") != self._range_end:
            raise BadRequest(400, f"key, range_end: the relay serves only {self.feed.prefix}")
        extra = sorted(k for k, v in req.items() if k not in ("key", "range_end") and v)
        if extra:
            raise BadRequest(400, f"{extra[0][:40]}: not served by the relay")

    async def _watch(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: Mapping[str, Any]
    ) -> None:
        create = req.get("create_request")
        if not isinstance(create, dict):
            raise BadRequest(400, "create_request: missing (the relay serves only new watches)")
        if create.get("key") != self._key or create.get("range_end") != self._range_end:
            raise BadRequest(
                400, f"create_request.key, range_end: the relay serves only {self.feed.prefix}"
            )
        extra = sorted(
            k for k, v in create.items() if k not in ("key", "range_end", "start_revision") and v
        )
        if extra:
            raise BadRequest(400, f"create_request.{extra[0][:40]}: not served by the relay")
        try:
            start = int(create.get("start_revision") or 0)
        except (TypeError, ValueError):
            raise BadRequest(400, "create_request.start_revision: not an integer") from None
        if not self.feed.ready:
            self.refused += 1
            _reply(writer, 503, _error(NOT_CURRENT, UNAVAILABLE))
            return
        if start <= 0:
            start = self.feed.revision + 1
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + self.feed.created()
        )
        if not self.feed.covers(start):
            writer.write(self.feed.compacted() + b"0\r\n\r\n")
            return
        transport = writer.transport
        assert isinstance(transport, asyncio.WriteTransport)
        stream = _Stream(transport, start, self._max_buffer)
        self.feed.subscribe(stream)
        try:
            while await reader.read(4096):
                pass  # a node sends nothing more; EOF when it (or we) closed
        finally:
            self.feed.unsubscribe(stream)
            if stream.slow:
                self.slow_cuts += 1
                log.warning("relay: a watch stream did not keep up; cut (its node lists again)")

    def _metrics(self) -> str:
        f = self.feed
        rows = [
            ("swarmnet_relay_ready", "gauge", "1 when the copy of the prefix is current",
             int(f.ready)),
            ("swarmnet_relay_revision", "gauge", "the etcd revision the copy is at", f.revision),
            ("swarmnet_relay_streams", "gauge", "open watch streams", len(f.subscribers)),
            ("swarmnet_relay_records", "gauge", "records in the copy", f.records),
            ("swarmnet_relay_responses_total", "counter", "watch responses relayed", f.responses),
            ("swarmnet_relay_events_total", "counter", "events relayed", f.events),
            ("swarmnet_relay_lists_total", "counter", "range requests answered", f.lists),
            ("swarmnet_relay_resets_total", "counter", "listings of etcd", f.resets),
            ("swarmnet_relay_slow_cuts_total", "counter", "streams cut for not reading",
             self.slow_cuts),
            ("swarmnet_relay_refused_total", "counter", "requests refused", self.refused),
        ]  # fmt: skip
        out = []
        for name, kind, text, value in rows:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise BadRequest(405, f"method {method[:10]}: only {allowed} is served here")


def _json(body: bytes) -> Mapping[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise BadRequest(400, "body: not JSON (or nested too deep)") from None
    if not isinstance(value, dict):
        raise BadRequest(400, "body: not a JSON object")
    return value


def _error(message: str, code: int) -> bytes:
    return json.dumps({"error": message, "message": message, "code": code}).encode()


def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, close: bool = False) -> None:
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    writer.write(head.encode() + body)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """(method, path, body), or None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise
    except asyncio.LimitOverrunError:
        raise BadRequest(413, f"request head: longer than {MAX_HEAD} bytes") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "request line: not HTTP/1.x")
    method, target = parts[0], parts[1]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest(411, "transfer-encoding: send a Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "content-length: not an integer") from None
    if length < 0 or length > MAX_BODY:
        raise BadRequest(413, f"content-length: {length} is over {MAX_BODY} bytes")
    body = await reader.readexactly(length) if length else b""
    return method, target.split("?", 1)[0], body
