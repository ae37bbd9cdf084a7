"""An in-memory LoadBalancer for unit tests of the modules that use the port.

It keeps per sandbox what the kernel would hold, and refuses what the real one
refuses: a sandbox that is not there (SandboxGone) and a state that cannot be
programmed (ValueError, the same check). The contract suite in
``tests/contract/lb_contract.py`` runs against both to keep it honest.

A sandbox exists once ``add_sandbox`` was called for its path (Docker bound its
namespace) and until ``remove_sandbox`` (the container died).
"""

from __future__ import annotations

import threading
from pathlib import Path

from driver.kernel import lb_state
from driver.lb.model import SandboxState, sandbox_state
from driver.lb.port import SandboxGone


class FakeLoadBalancer:
    def __init__(self, unavailable: str | None = None) -> None:
        self._lock = threading.Lock()
        self.reason = unavailable
        self.sandboxes: dict[Path, SandboxState] = {}  # live sandbox -> what it holds of ours
        # Failure injection: method name ("program", "clear", "read") -> exception raised once.
        self.fail_next: dict[str, Exception] = {}
        self.calls: list[tuple[str, Path]] = []  # (method, sandbox), in order

    # -- the world around the port ---------------------------------------------

    def add_sandbox(self, sandbox: Path) -> None:
        with self._lock:
            self.sandboxes.setdefault(sandbox, ())

    def remove_sandbox(self, sandbox: Path) -> None:
        with self._lock:
            self.sandboxes.pop(sandbox, None)

    # -- the port ----------------------------------------------------------------

    def unavailable(self) -> str | None:
        return self.reason

    def program(self, sandbox: Path, state: SandboxState) -> None:
        lb_state.check(state)
        with self._lock:
            self._enter("program", sandbox)
            if sandbox not in self.sandboxes:
                raise SandboxGone(f"sandbox {sandbox}: no network namespace is bound there")
            self.sandboxes[sandbox] = sandbox_state(state)

    def clear(self, sandbox: Path) -> None:
        with self._lock:
            self._enter("clear", sandbox)
            if sandbox in self.sandboxes:
                self.sandboxes[sandbox] = ()

    def read(self, sandbox: Path) -> SandboxState:
        with self._lock:
            self._enter("read", sandbox)
            if sandbox not in self.sandboxes:
                raise SandboxGone(f"sandbox {sandbox}: no network namespace is bound there")
            return self.sandboxes[sandbox]

    def _enter(self, method: str, sandbox: Path) -> None:
        self.calls.append((method, sandbox))
        failure = self.fail_next.pop(method, None)
        if failure is not None:
            raise failure
