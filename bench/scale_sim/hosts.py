"""The simulator's processes (testbed.scalesim.host), each hosting many nodes.

Commands are pipelined: ``send`` returns at once with a ``Pending`` reply, which a reader
thread fills in order; ``call`` waits for it (bounded). Stopping ends every process, with
SIGKILL if one does not exit in time.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any


class HostError(RuntimeError):
    pass


class Pending:
    def __init__(self) -> None:
        self._done = threading.Event()
        self.reply: dict[str, Any] = {}

    def set(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> dict[str, Any]:
        if not self._done.wait(timeout):
            raise HostError(f"no reply within {timeout:g}s")
        if not self.reply.get("ok"):
            raise HostError(self.reply.get("error", "host process failed"))
        return self.reply


class HostProc:
    def __init__(self, index: int, log: Path) -> None:
        self.index = index
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "testbed.scalesim.host"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip
        self._lock = threading.Lock()
        self._pending: collections.deque[Pending] = collections.deque()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                pending = self._pending.popleft()
            pending.set(json.loads(line))
        with self._lock:
            left, self._pending = list(self._pending), collections.deque()
        for pending in left:
            pending.set({"ok": False, "error": f"host {self.index} exited; see {self.log}"})

    def send(self, cmd: dict[str, Any]) -> Pending:
        pending = Pending()
        assert self.proc.stdin is not None
        with self._lock:
            if self.proc.poll() is not None:
                pending.set({"ok": False, "error": f"host {self.index} exited; see {self.log}"})
                return pending
            self._pending.append(pending)
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        return pending

    def call(self, cmd: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        return self.send(cmd).wait(timeout)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(b'{"op": "stop"}\n')
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def call_all(hosts: list[HostProc], cmd: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """The same command to every host at once; their replies in host order."""
    pending = [h.send(cmd) for h in hosts]
    return [p.wait(timeout) for p in pending]
