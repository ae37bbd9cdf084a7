"""One way to watch the calls a WSGI app answers: the access log and the call metrics both
use it, each with its own report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# done(environ, status, seconds): status is the reply's code ("200"), or ``unanswered``
# when the app raised before it started a reply.
Done = Callable[["WSGIEnvironment", str, float], None]


def observed(app: WSGIApplication, done: Done, unanswered: str) -> WSGIApplication:
    """``app``, calling ``done`` once per request, after the app has returned."""

    def watched(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        status = unanswered

        def start(code: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info)

        try:
            return app(environ, start)
        finally:
            done(environ, status, time.monotonic() - started)

    return watched
