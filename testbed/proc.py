"""Commands and processes, for every bed: one way to run a tool, to wait, and to find and kill
what a bed started (by network namespace, command line or cgroup), whoever its parent is."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")


class BedError(RuntimeError):
    """A step of a test bed failed; the message says which, and where the logs are."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool, its output captured; BedError on a timeout, or on failure with ``check``."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            input=input,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as e:
        raise BedError(f"timed out after {timeout:g}s: {shlex.join(argv)}") from e
    if check and proc.returncode != 0:
        raise BedError(
            f"exit {proc.returncode}: {shlex.join(argv)}\n"
            f"{proc.stdout.strip()}\n{proc.stderr.strip()}".rstrip()
        )
    return proc


def wait_for(
    what: str, predicate: Callable[[], object], timeout: float, interval: float = 0.2
) -> object:
    """Poll ``predicate`` until it returns something truthy; BedError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (BedError, OSError) as e:
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise BedError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` of a log, for an error message."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def pid_alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    try:
        state = _stat_fields(pid)[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL; nothing if it has exited already."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    field 3 (state) is at index 0."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of ``pid`` so far (stat fields 14 and 15)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kib(path: Path, field: str) -> int | None:
    """A ``Field:  N kB`` line of a /proc file (status, smaps_rollup), in KiB; None if absent."""
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_bytes(pid: int | str = "self") -> int:
    """VmRSS of ``pid``; 0 for a process without one (a kernel thread, a zombie)."""
    return (kib(Path(f"/proc/{pid}/status"), "VmRSS") or 0) * 1024


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace"
        )
    return ""


def ns_inode(path: Path | str) -> tuple[int, int] | None:
    """What tells two namespaces apart (device, inode), None when ``path`` is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def in_netns_of(target: Path | str) -> Callable[[int], bool]:
    """A test: is a pid's network namespace the one at ``target``?"""
    wanted = ns_inode(target)
    return lambda pid: wanted is not None and ns_inode(f"/proc/{pid}/ns/net") == wanted


def netns_pids(name: str) -> set[int]:
    """Pids of live processes whose network namespace is ``/run/netns/<name>``."""
    if ns_inode(NETNS_DIR / name) is None:
        return set()
    inside = in_netns_of(NETNS_DIR / name)
    return {int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and inside(int(e.name))}


def children(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.update(int(c) for c in (task / "children").read_text().split())
    return found


def descendants(pids: set[int]) -> set[int]:
    """``pids`` and every process below them."""
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children(pid))
    return seen


def kill_until_gone(find: Callable[[], set[int]], what: str, timeout: float = 30.0) -> None:
    """SIGKILL what ``find`` returns (never this process) until it returns nothing alive."""
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        pids = {p for p in find() if p != me and pid_alive(p)}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise BedError(f"{what}: processes survive SIGKILL: {sorted(pids)}")
        time.sleep(0.05)


def unavailable(
    who_needs: str, root_for: str, paths: Sequence[str], commands: Sequence[str] = ()
) -> str | None:
    """Why a bed cannot run here (``who_needs``: "the lab needs"), or None: it needs root, each
    of ``paths`` executable, and each of ``commands`` on PATH."""
    if os.geteuid() != 0:
        return f"{who_needs} root ({root_for})"
    for tool in paths:
        if not os.access(tool, os.X_OK):
            return f"{who_needs} {tool}"
    for tool in commands:
        if shutil.which(tool) is None:
            return f"{who_needs} {tool}"
    return None
