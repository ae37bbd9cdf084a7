"""The plugin's HTTP server: gunicorn, serving the WSGI app on the plugin's unix socket.

gunicorn is used as a library (``BaseApplication``), so its settings are made here in code.
The arbiter binds the socket (0600: the umask, not a chmod after the bind) and listens
before it forks, then forks one ``gthread`` worker, which builds the app: imports, stores,
the reconcile. A call dockerd sends meanwhile waits in the listen backlog; it is not
refused. The arbiter never imports the app, so it stays small.

One worker, because the kernel work, the stores' memos and the control plane's queue are
per process. Threads run calls on different networks in parallel (the kernel work is
serialised per network further down). dockerd keeps its connections open between calls:
gthread parks an idle kept-alive connection in its poller, not in a thread, so idle
connections never pin request threads.

Signals are gunicorn's: SIGTERM stops gracefully (calls in flight finish, then the
worker's ``close`` runs), SIGINT and SIGQUIT stop at once, SIGHUP starts a fresh worker.
A worker that dies (``kill -9``) is replaced by the arbiter; the new one builds the app
again, so it reconciles like a fresh start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from plugin.wsgi import observed

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)
access_log = logging.getLogger("swarmnet.access")

THREADS = 16
# After SIGTERM, calls in flight get this long to finish ...
GRACE = 3
# ... then the worker's close (withdrawals flushed, background threads stopped) this long,
# before the arbiter kills the worker. Docker waits 10 s, then kills the plugin.
CLOSE_GRACE = 3
# An idle kept-alive connection is closed after this long; dockerd reconnects when it needs.
IDLE_TIMEOUT = 120
# A worker whose main loop is silent this long is killed and replaced. The app is built
# before the loop starts, so this also bounds the reconcile at start.
TIMEOUT = 120


@dataclass(frozen=True)
class Loaded:
    """What the worker builds: the app, and what to run when the worker stops."""

    app: WSGIApplication
    close: Callable[[], None]


def with_access_log(app: WSGIApplication) -> WSGIApplication:
    """One debug line per request: method, path, status and time taken."""

    def log(environ: WSGIEnvironment, status: str, seconds: float) -> None:
        access_log.debug(
            "%s %s %s %.1f ms",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            status,
            seconds * 1000,
        )

    return observed(app, log, unanswered="-")


class Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, except that a stop closes idle connections at once.

    gunicorn keeps a stopping worker's kept-alive connections open for up to 2 s, for a
    request a client may already be sending. dockerd sends none to a plugin it is
    stopping, and each of its idle connections would hold the exit back that long.
    """

    def _cap_keepalive(self, deadline: float) -> None:
        now = time.monotonic()
        super()._cap_keepalive(now)
        # Connections that never sent a request (parked after 5 s) go too.
        for conn in self.pending_conns:
            conn.timeout = min(conn.timeout, now)

    def finish_request(self, conn: Any, fs: Any) -> None:
        # A call that was in flight at the stop: its reply is sent, its connection closes.
        super().finish_request(conn, fs)
        if not self.alive:
            self._cap_keepalive(0.0)


class _Application(BaseApplication):  # type: ignore[misc]
    def __init__(self, load: Callable[[], Loaded], options: dict[str, Any], access: bool) -> None:
        self._load = load
        self._options = options
        self._access = access
        self._loaded: Loaded | None = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApplication:
        # In the worker, after the fork: the arbiter never holds the app.
        self._loaded = self._load()
        app = self._loaded.app
        return with_access_log(app) if self._access else app

    def close_worker(self) -> None:
        """In the worker on its way out; in the arbiter (which loaded nothing) a no-op."""
        if self._loaded is not None:
            loaded, self._loaded = self._loaded, None
            loaded.close()


def _post_fork(grace: int) -> Callable[[Any, Any], None]:
    def post_fork(_arbiter: Any, worker: Any) -> None:
        # The worker's own copy of the settings (it is a forked process): calls in flight
        # get ``grace``; the arbiter keeps the longer timeout, which leaves time for close.
        worker.cfg.set("graceful_timeout", grace)

    return post_fork


def _worker_exit(_arbiter: Any, worker: Any) -> None:
    try:
        worker.app.close_worker()
    except Exception:
        log.exception("stopping the plugin's services failed")


def prepare_socket(path: Path) -> None:
    """The socket's directory exists and nothing is left at its path (a stale socket after
    a kill, or a symlink, which a bind would follow)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def serve(
    load: Callable[[], Loaded],
    path: Path,
    *,
    threads: int = THREADS,
    grace: int = GRACE,
    close_grace: int = CLOSE_GRACE,
    access: bool = False,
    log_level: str = "info",
    name: str = "swarmnet-overlay",
) -> int:
    """Serve on the unix socket ``path`` until a stop signal; returns the exit status.

    ``load`` runs in the worker (again in each replacement worker) and builds the app;
    its ``close`` runs when the worker stops. ``grace`` and ``close_grace`` are whole
    seconds, as gunicorn takes them. ``access``: a debug log line per request.
    """
    prepare_socket(path)
    options: dict[str, Any] = {
        "bind": f"unix:{path}",
        "umask": 0o077,  # the socket is 0600 from its bind on
        "workers": 1,
        "worker_class": Worker,
        "threads": threads,
        "keepalive": IDLE_TIMEOUT,
        "timeout": TIMEOUT,
        "graceful_timeout": grace + close_grace,
        "post_fork": _post_fork(grace),
        "worker_exit": _worker_exit,
        "proc_name": name,
        # gunicorn's debug lines would repeat the access log's, request by request.
        "loglevel": "info" if log_level == "debug" else log_level,
        "errorlog": "-",
        "accesslog": None,  # with_access_log writes ours, through logging
        # A control socket under $HOME, and its asyncio thread in the arbiter: not needed.
        "control_socket_disable": True,
    }
    arbiter = os.getpid()
    status = 1
    try:
        _Application(load, options, access).run()
        status = 0
    except SystemExit as e:
        status = _exit_status(e.code)
    finally:
        if os.getpid() != arbiter:
            # gunicorn's worker returns through the arbiter's frames (and would run our
            # caller's code: the arbiter's clean-up) and, at interpreter exit, would wait
            # for request threads stuck past the grace time. It ends here instead.
            logging.shutdown()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    log.info("stopped (exit status %d)", status)
    return status
