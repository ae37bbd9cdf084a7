"""What the driver needs from a store. Adapters live in ``plugin/store``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class KV(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def list(self, prefix: str) -> dict[str, bytes]: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """Atomic read-modify-write: compare-and-swap with retry inside the adapter.

        ``fn`` may run more than once, so it must be pure. ``None`` deletes the key.
        An exception from ``fn`` aborts with nothing written.
        """
        ...
