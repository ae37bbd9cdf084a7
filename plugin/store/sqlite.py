"""The embedded store: one SQLite file in the plugin's state directory.

SQLite gives us atomic, durable writes (a crash mid-write leaves the previous
value) and a cross-process write lock (``BEGIN IMMEDIATE``), so two plugin
processes sharing a state directory still never lose an update.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID
"""


class SqliteKV:
    def __init__(self, path: Path) -> None:
        # The store holds the IPsec master keys: only its owner may read it
        # (docs/encryption.md). Older installs made 0644; tighten them too. The
        # plugin's state directory itself is made 0700 by the app.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for existing in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(existing, 0o600)
        self.path = path
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self._db = sqlite3.connect(
            str(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def list(self, prefix: str) -> dict[str, bytes]:
        # Range scan on the primary key: [prefix, prefix + U+10FFFF).
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
        return {k: bytes(v) for k, v in rows}

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO kv(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
                new = fn(None if row is None else bytes(row[0]))
                if new is None:
                    self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
                else:
                    self._db.execute(
                        "INSERT INTO kv(key, value) VALUES(?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, new),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return new
