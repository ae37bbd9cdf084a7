"""The /metrics endpoint: a small threaded HTTP server in gunicorn's worker.

Started by the worker after the fork (never in the arbiter, which imports no app), so
a replacement worker binds again. The listening socket has SO_REUSEADDR, so connections
of a killed worker left in TIME_WAIT do not block the bind; but two live listeners on
one port are refused, and for a moment after a SIGHUP (or before the kernel has closed a
killed worker's socket) the old worker still holds it. So a bind that finds the address
in use is retried in the background until it succeeds or the worker stops: the plugin's
socket, and so the network, never waits for metrics.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

RETRY = 0.5  # seconds between binds while the address is in use


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def _server_class(host: str) -> type[ThreadingWSGIServer]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingWSGIServer):
        address_family = family
        allow_reuse_address = True  # also the base's; said here because the design needs it
        daemon_threads = True

    return Server


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._app = make_wsgi_app(registry)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._httpd: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.bound = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="swarmnet-metrics", daemon=True)
        self._thread.start()

    def _bind(self) -> ThreadingWSGIServer | None:
        said = False
        while not self._stop.is_set():
            try:
                return make_server(
                    self.host, self.port, self._app, _server_class(self.host), handler_class=_Quiet
                )
            except OSError as e:
                if not said:
                    why = "in use (a previous worker?)" if e.errno == errno.EADDRINUSE else e
                    log.warning(
                        "metrics: cannot listen on %s:%d yet: %s; retrying every %.1f s",
                        self.host, self.port, why, RETRY,
                    )
                    said = True
            self._stop.wait(RETRY)
        return None

    def _run(self) -> None:
        httpd = self._bind()
        if httpd is None:
            return
        with self._lock:
            if self._stop.is_set():
                httpd.server_close()
                return
            self._httpd = httpd
        log.info("metrics: serving http://%s:%d/metrics", self.host, self.port)
        self.bound.set()
        httpd.serve_forever(poll_interval=0.5)

    def close(self) -> None:
        """Stop listening now (the next worker binds the port); waits for the thread."""
        self._stop.set()
        with self._lock:
            httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
