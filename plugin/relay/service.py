"""The relay's parts put together, serving until stopped (``swarmnet relay``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

from plugin.relay.feed import HEARTBEAT, Feed
from plugin.relay.server import RelayServer
from plugin.relay.upstream import Upstream
from plugin.store.etcd import EtcdKV

log = logging.getLogger(__name__)


async def _heartbeat(feed: Feed) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT)
        feed.heartbeat()


def tls_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """The listener's TLS; with ``client_ca``, nodes must show a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


async def run(
    kv: EtcdKV,
    prefix: str,
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when run as the main program)."""
    loop = asyncio.get_running_loop()
    feed = Feed(prefix)
    upstream = Upstream(kv, feed, loop)
    server = RelayServer(feed, lambda: upstream.version)
    listener = await server.start(host, port, tls)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    upstream.start()
    beat = asyncio.create_task(_heartbeat(feed))
    log.info("relay: serving %s on %s:%d for etcd %s", prefix, host, port, ",".join(kv.endpoints))
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        beat.cancel()
        listener.close()
        feed.lost()  # the streams end: nodes list again elsewhere
        await loop.run_in_executor(None, upstream.stop)
        await listener.wait_closed()
