"""Debian's ``docker-registry`` for tests that push and pull plugins: its config file."""

from __future__ import annotations

from pathlib import Path

BIN = "/usr/bin/docker-registry"


def write_config(directory: Path, addr: str) -> Path:
    """A config in ``directory`` that stores blobs under ``directory/data``, serves plain HTTP
    on ``addr`` (host:port) and logs only warnings; its path."""
    directory.mkdir(exist_ok=True)
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\n"
        f"http:\n  addr: {addr}\n"
    )
    return config
