"""The one error map: exceptions to HTTP status and the protocol's error body.

NetworkDriver replies carry the message under "Err", IpamDriver replies under
"Error". Domain errors say their own status (``http_status``). Anything else is
a bug: its traceback goes to the log, and the caller gets a short message.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def error_key(path: str) -> str:
    return "Error" if path.startswith("/IpamDriver.") else "Err"


def error_response(status: int, message: str) -> Response:
    resp = jsonify({error_key(request.path): message})
    resp.status_code = status
    return resp


def _handle(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        if code == 404:
            # libnetwork reads 404 as "this plugin does not implement that call".
            return error_response(404, f"{request.path}: not implemented by swarmnet-overlay")
        return error_response(code, f"{request.path}: {exc.description}")
    status = getattr(exc, "http_status", None)
    if isinstance(status, int) and 400 <= status < 600:
        if status >= 500:
            log.error("%s failed: %s", request.path, exc)
        else:
            log.info("%s rejected: %s", request.path, exc)
        return error_response(status, str(exc))
    log.exception("%s: unexpected error", request.path)
    return error_response(
        500, f"{request.path}: internal error ({type(exc).__name__}); see the plugin log"
    )


def install(app: Flask) -> None:
    app.register_error_handler(Exception, _handle)
