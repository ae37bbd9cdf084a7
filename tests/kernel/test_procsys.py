"""driver.kernel.procsys: a read-only /proc/sys (as Docker mounts it in a managed
plugin) is made writable in the plugin's own mount namespace, and only there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.kernel

SCRIPT = textwrap.dedent(
    """
    import os, subprocess
    from driver.kernel import procsys
    # As Docker does it: /proc/sys bound onto itself, then read-only.
    subprocess.run(["mount", "--bind", "/proc/sys", "/proc/sys"], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", "/proc/sys"], check=True)
    assert os.statvfs("/proc/sys").f_flag & os.ST_RDONLY, "setup: not read-only"
    assert procsys.make_writable() is None
    assert not os.statvfs("/proc/sys").f_flag & os.ST_RDONLY, "still read-only"
    assert procsys.make_writable() is None  # nothing left to do
    print("ok")
    """
)


def test_a_read_only_proc_sys_is_remounted_writable_in_a_private_mount_namespace() -> None:
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    # The host's /proc/sys was never touched: it is writable as before.
    assert not os.statvfs("/proc/sys").f_flag & os.ST_RDONLY


def test_a_missing_path_is_reported_not_raised() -> None:
    from driver.kernel import procsys

    assert "no-such" in (procsys.make_writable("/proc/no-such-dir") or "")
