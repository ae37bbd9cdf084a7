"""The watch relay: one watch on etcd, fanned out to many nodes (``swarmnet relay``).

Without it every node holds its own watch on ``<root>/peers/``, and etcd encodes every event
once per node: at 1,000 nodes and 100 events/s that is 100,000 watcher-events/s, about 6
etcd cores (docs/benchmarks.md). A relay, like Calico's Typha, holds one watch and one copy
of the prefix and serves the same two gateway calls a node's watcher makes (range and watch),
so a node needs only ``PEER_RELAYS`` to use it. Writes, leases and keep-alives still go to
etcd. Several relays may serve one cluster; a node tries its list in turn, and a relay that
loses etcd refuses, so nodes move on.

    feed.py      the copy of the prefix, its recent history and the open streams
    upstream.py  the thread that lists and watches etcd
    server.py    the HTTP side (asyncio)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

from plugin.relay.feed import Feed
from plugin.relay.server import RelayServer
from plugin.relay.upstream import Upstream
from plugin.store.etcd import EtcdKV

log = logging.getLogger(__name__)


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
    log.info("relay: serving %s on %s:%d for etcd %s", prefix, host, port, ",".join(kv.endpoints))
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        listener.close()
        feed.lost()  # the streams end: nodes list again elsewhere
        await loop.run_in_executor(None, upstream.stop)
        await listener.wait_closed()
