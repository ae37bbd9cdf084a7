from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from driver.kernel.fake import FakeKernel
from plugin.app import create_app
from plugin.settings import from_env
from plugin.store.memory import MemoryKV

FIXTURES = Path(__file__).parent / "fixtures" / "dockerd"


@dataclass
class Plugin:
    client: FlaskClient
    kernel: FakeKernel
    store: MemoryKV

    def call(self, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        # Docker sends no Content-Type header.
        resp = self.client.post(path, data=data, headers={})
        return resp.status_code, resp.get_json(force=True, silent=True)

    def ok(self, path: str, body: Any = None) -> Any:
        status, reply = self.call(path, body)
        assert status == 200, (path, status, reply)
        return reply


def make_plugin(
    env: dict[str, str] | None = None,
    store: MemoryKV | None = None,
    kernel: FakeKernel | None = None,
) -> Plugin:
    settings = from_env(env or {})
    kernel = kernel or FakeKernel()
    store = store or MemoryKV()
    app = create_app(settings, kernel=kernel, local=store, shared=store)
    return Plugin(client=app.test_client(), kernel=kernel, store=store)


@pytest.fixture
def plugin() -> Iterator[Plugin]:
    yield make_plugin()


def fixture(name: str) -> Any:
    """A request body captured from a real dockerd (tests/unit/fixtures/dockerd)."""
    return json.loads((FIXTURES / name).read_text())
