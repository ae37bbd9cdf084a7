"""The one error map: exceptions to HTTP status and the protocol's error body.

NetworkDriver replies carry the message under "Err". IpamDriver replies carry
it under both "Error" (the IPAM protocol's field) and "Err": on a non-200 reply
Docker's plugin client reads only "Err" and otherwise prints the whole body, so
without it a user reads raw JSON. An error's kind (``core.errors``) says its
status, here and nowhere else. Anything else is a bug: its traceback goes to the
log, and the caller gets a short message.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from core.errors import (
    BadRequest,
    Conflict,
    Exhausted,
    Internal,
    NotFound,
    Unavailable,
    Unsupported,
)

log = logging.getLogger(__name__)

STATUS: dict[type[Exception], int] = {
    BadRequest: 400,
    # Not 404: libnetwork reads a 404 as "this plugin does not implement that call".
    NotFound: 400,
    Conflict: 409,
    Internal: 500,
    Unsupported: 501,
    Unavailable: 503,
    # "Insufficient Storage": the request is fine, there is no room left.
    Exhausted: 507,
}


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of ``exc``'s kind; None for an exception of no kind (a bug).

    The nearest kind in the class's method resolution order wins, so a class
    that names two kinds answers with the first.
    """
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return None


def error_keys(path: str) -> tuple[str, ...]:
    return ("Error", "Err") if path.startswith("/IpamDriver.") else ("Err",)


# Longest error message sent or logged: a client's 10 MB field must not come back
# as a 10 MB reply and log line. The codec already quotes values cut short.
MAX_MESSAGE = 1024


def _bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _path() -> str:
    return _bounded(request.path, 100)


def error_response(status: int, message: str) -> Response:
    message = _bounded(message)
    resp = jsonify({key: message for key in error_keys(request.path)})
    resp.status_code = status
    return resp


def _handle(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        if code == 404:
            # libnetwork reads 404 as "this plugin does not implement that call".
            return error_response(404, f"{_path()}: not implemented by swarmnet-overlay")
        return error_response(code, f"{_path()}: {exc.description}")
    status = status_of(exc)
    if status is not None:
        message = _bounded(str(exc))
        if status >= 500:
            log.error("%s failed: %s", _path(), message)
        else:
            log.info("%s rejected: %s", _path(), message)
        return error_response(status, message)
    log.exception("%s: unexpected error", _path())
    return error_response(
        500, f"{_path()}: internal error ({type(exc).__name__}); see the plugin log"
    )


def install(app: Flask) -> None:
    app.register_error_handler(Exception, _handle)
