from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from driver.kernel.fake import FakeKernel
from driver.peers import OnChanges, OnSnapshot, PeerRecord
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
    control: RecordingControlPlane | None = None,
) -> Plugin:
    settings = from_env(env or {})
    kernel = kernel or FakeKernel()
    store = store or MemoryKV()
    app = create_app(settings, kernel=kernel, local=store, shared=store, control=control)
    return Plugin(client=app.test_client(), kernel=kernel, store=store)


@pytest.fixture
def plugin() -> Iterator[Plugin]:
    yield make_plugin()


def fixture(name: str) -> Any:
    """A request body captured from a real dockerd (tests/unit/fixtures/dockerd)."""
    return json.loads((FIXTURES / name).read_text())


class RecordingControlPlane:
    """The ControlPlane port, remembering what is published, watched and withdrawn."""

    def __init__(self) -> None:
        self.published: dict[str, PeerRecord] = {}
        self.withdrawals: list[str] = []
        self.watched: set[str] = set()
        self.on_snapshot: OnSnapshot | None = None
        self.on_changes: OnChanges | None = None

    def start(self, on_snapshot: OnSnapshot, on_changes: OnChanges | None = None) -> None:
        self.on_snapshot = on_snapshot
        self.on_changes = on_changes

    def deliver_changes(self, network_id: str, changes: Mapping[str, PeerRecord | None]) -> bool:
        """Hand the driver what changed, as the etcd watcher does between snapshots."""
        assert self.on_changes is not None, "the driver takes no changes"
        return self.on_changes(network_id, changes)

    def deliver(self, network_id: str, records: list[PeerRecord], recheck: bool = False) -> None:
        """Hand the driver a snapshot, as a real control plane's watch would."""
        assert self.on_snapshot is not None, "the driver has not started the control plane"
        self.on_snapshot(
            network_id, {r.endpoint_id: r for r in records}, recheck=recheck
        )

    def watch(self, network_id: str) -> None:
        self.watched.add(network_id)

    def unwatch(self, network_id: str) -> None:
        self.watched.discard(network_id)

    def publish(self, record: PeerRecord) -> None:
        self.published[record.endpoint_id] = record

    def withdraw(self, network_id: str, endpoint_id: str) -> None:
        self.withdrawals.append(endpoint_id)
        self.published.pop(endpoint_id, None)

    def close(self) -> None:
        return None

    def describe(self) -> str:
        return "recording (test)"

    def announce(self, info: Mapping[str, object]) -> None:
        self.announced = dict(info)

    def nodes(self) -> dict[str, Mapping[str, object]]:
        return {}
