"""The swarm service view, from dockerd's Engine API (the ``docker`` SDK's low-level client).

Only the load-balancing collector's thread calls this, never an HTTP request handler:
dockerd may be waiting on the plugin's answer while we wait on dockerd's (deadlock).

Every call has a bound. Plain requests time out after ``timeout`` seconds; the event
wait asks dockerd for the events of a bounded window (``since``/``until``), so dockerd
itself ends the stream (a read timeout past the window covers a dockerd that hangs),
and ``close`` cuts a wait short from another thread.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from typing import Any

from plugin.unixhttp import UnixHTTPConnection

# Engine API 1.41 is Docker 20.10's. Pinned rather than negotiated: negotiating would
# cost a request when the client is built, and newer fields are not needed.
API_VERSION = "1.41"
DEFAULT_TIMEOUT = 10.0
FILTERS = {"type": ["service", "node"]}


class DockerUnavailable(Exception):
    """dockerd did not answer, or answered with an error. Nothing may be decided on it."""


class SwarmView:
    def __init__(
        self, base_url: str, timeout: float = DEFAULT_TIMEOUT, api: Any | None = None
    ) -> None:
        """``api``: a ready ``docker.APIClient`` (tests); by default one is built, lazily."""
        self.base_url = base_url
        self.timeout = timeout
        self._api = api
        self._lock = threading.Lock()
        self._stream: Any = None
        self._closed = False
        self._since: int | None = None
        self._last_event: tuple[int, str] | None = None

    def _client(self) -> Any:
        with self._lock:
            if self._closed:
                raise DockerUnavailable("the swarm view is closed")
            if self._api is None:
                import docker

                self._api = docker.APIClient(
                    base_url=self.base_url, version=API_VERSION, timeout=self.timeout
                )
            return self._api

    def _call(self, what: str, fn: Any) -> Any:
        import docker.errors
        import requests

        try:
            return fn(self._client())
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise DockerUnavailable(f"dockerd ({self.base_url}): {what} failed: {e}") from e

    def is_manager(self) -> bool:
        """Whether this node is a swarm manager (only managers can list services).

        Every node asks this every poll, workers too, and workers never list anything:
        on a unix socket it is one plain request, so a worker never loads the SDK (7 MB
        of the plugin's memory)."""
        if self.base_url.startswith("unix://"):
            info = self._info_over_unix(self.base_url[len("unix://") :])
        else:
            info = self._call("info", lambda api: api.info())
        return bool(((info or {}).get("Swarm") or {}).get("ControlAvailable"))

    def _info_over_unix(self, path: str) -> Any:
        with self._lock:
            if self._closed:
                raise DockerUnavailable("the swarm view is closed")
        conn = UnixHTTPConnection(path, timeout=self.timeout)
        try:
            conn.request("GET", f"/v{API_VERSION}/info")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise DockerUnavailable(f"dockerd ({self.base_url}): info failed: {e}") from e
        finally:
            conn.close()
        if resp.status != 200:
            raise DockerUnavailable(
                f"dockerd ({self.base_url}): info failed: HTTP {resp.status}: {body[:200]!r}"
            )
        try:
            return json.loads(body)
        except ValueError as e:
            raise DockerUnavailable(f"dockerd ({self.base_url}): info: not JSON: {e}") from e

    def services(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("list services", lambda api: api.services())
        return result

    def tasks(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("list tasks", lambda api: api.tasks())
        return result

    def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("list nodes", lambda api: api.nodes())
        return result

    def wait_for_change(self, timeout: float) -> bool:
        """Wait up to about ``timeout`` s for a service or node event; True if one came.

        Each wait asks from where the last one stopped (whole seconds, as dockerd counts
        ``since``), so an event between two waits is not missed; one seen already is not
        reported twice. Raises DockerUnavailable when dockerd cannot be asked.
        """
        now = time.time()
        since = self._since if self._since is not None else int(now)
        until = math.ceil(now + max(timeout, 0.0))

        def open_stream(api: Any) -> Any:
            from docker.types import CancellableStream
            from docker.utils import convert_filters

            params = {"since": since, "until": until, "filters": convert_filters(FILTERS)}
            # APIClient.events() reads with no timeout at all; this is its request with a
            # read timeout past ``until``, so even a dockerd that hangs cannot block us.
            response = api._get(
                api._url("/events"),
                params=params,
                stream=True,
                timeout=(self.timeout, until - now + self.timeout),
            )
            return CancellableStream(api._stream_helper(response, decode=True), response)

        stream = self._call("read events", open_stream)
        with self._lock:
            if self._closed:
                _close_quietly(stream)
                return False
            self._stream = stream
        try:
            for event in stream:
                actor = (event.get("Actor") or {}).get("ID") or ""
                mark = (int(event.get("timeNano") or 0), f"{event.get('Action')}/{actor}")
                if self._last_event is not None and mark <= self._last_event:
                    continue
                self._last_event = mark
                self._since = mark[0] // 1_000_000_000
                return True
        except Exception as e:
            if self._closed:
                return False
            raise DockerUnavailable(f"dockerd ({self.base_url}): reading events failed: {e}") from e
        finally:
            with self._lock:
                self._stream = None
            # Stops the stream before dockerd's window ends.
            _close_quietly(stream)
        # The stream may have ended early (dockerd restarted): go on from where it did.
        self._since = min(until, int(time.time()))
        return False

    def close(self) -> None:
        """Cut a wait short (from any thread) and release the connection."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
            api = self._api
        if stream is not None:
            _close_quietly(stream)
        if api is not None:
            _close_quietly(api)


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:  # closing what is already broken or closed
        return
