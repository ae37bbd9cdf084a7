"""The plugin's HTTP server: the WSGI app on a unix socket, in this one process.

One process, because a supervisor process would only cost memory (gunicorn's arbiter took
25 MB to fork and watch one worker): dockerd itself restarts an enabled plugin whose
process exits. waitress serves: one I/O thread holds every connection (dockerd keeps its
connections open, so an idle one must not pin a request thread) and a pool of request
threads runs the app; the kernel work is serialised per network further down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)
access_log = logging.getLogger("swarmnet.access")

THREADS = 16
# In-flight requests get this long to finish after SIGTERM; Docker waits 10 s, then kills.
GRACE = 3
# Idle connections are closed after this long; dockerd reconnects when it needs one.
IDLE_TIMEOUT = 120


@contextlib.contextmanager
def listening(path: Path) -> Iterator[socket.socket]:
    """The plugin's socket, bound and listening, readable and writable by root only;
    closed and removed on the way out.

    Listening before the app is built lets dockerd connect while the plugin reconciles:
    its request waits in the backlog instead of being refused.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        # The umask, not a chmod after bind: there is no moment when others may connect.
        old = os.umask(0o077)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        try:
            sock.listen(1024)
            yield sock
        finally:
            path.unlink(missing_ok=True)


def with_access_log(app: WSGIApplication) -> WSGIApplication:
    """One debug line per request: method, path, status and time taken."""

    def logged(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        status = "-"

        def start(code: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info)

        try:
            return app(environ, start)
        finally:
            access_log.debug(
                "%s %s %s %.1f ms",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                status,
                (time.monotonic() - started) * 1000,
            )

    return logged


def serve(
    app: WSGIApplication,
    sock: socket.socket,
    *,
    threads: int = THREADS,
    grace: float = GRACE,
    access: bool = False,
) -> str:
    """Serve on ``sock`` until SIGTERM or SIGINT; returns the signal's name.

    Call from the main thread: the signal handlers run there. On a signal the server stops
    accepting, gives requests in flight ``grace`` seconds and returns; a second signal
    ends the wait (SystemExit). A request thread sends its reply itself, so the replies of
    requests that finish in the grace time still reach dockerd. ``access``: a debug log
    line per request.
    """
    from waitress.server import create_server
    from waitress.task import ThreadedTaskDispatcher
    from waitress.wasyncore import close_all

    class Dispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
        # waitress stops its loop on SystemExit, then waits this long for its threads.
        def shutdown(self, cancel_pending: bool = True, timeout: float = grace) -> bool:
            return bool(super().shutdown(cancel_pending=cancel_pending, timeout=timeout))

    dispatcher = Dispatcher()
    dispatcher.set_thread_count(threads)
    server: Any = create_server(
        with_access_log(app) if access else app,
        sockets=[sock],
        threads=threads,
        channel_timeout=IDLE_TIMEOUT,
        asyncore_use_poll=True,  # select() cannot watch descriptors above 1023
        ident="swarmnet-overlay",
        _dispatcher=dispatcher,
    )
    got: list[str] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        got.append(signal.Signals(signum).name)
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("serving on unix:%s with %d request threads", sock.getsockname(), threads)
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # The listening socket, its wake-up pipe and the connections still open.
        close_all(server._map)
    name = got[0] if got else "end of loop"
    log.info("stopped (%s)", name)
    return name
