"""A writable /proc/sys for the per-namespace sysctls the plugin sets: load balancing's
(net.ipv4.vs.*, in sandboxes) and the data path's (net.bridge.bridge-nf-call-*, in our
network namespaces).

Docker mounts /proc/sys read-only in a managed plugin, as in any container. The
sysctls we write are per network namespace and resolve against the writing thread's
namespace, which is always a container's sandbox or one of our network namespaces,
never the host's.
The plugin already holds CAP_SYS_ADMIN and runs in its own mount namespace, so
remounting /proc/sys read-write there widens nothing: it changes no mount the host
or a container sees.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]


def make_writable(path: str = "/proc/sys") -> str | None:
    """Remount ``path`` read-write if it is a read-only mount. None on success or when
    there was nothing to do; otherwise why it stays read-only."""
    try:
        if not os.statvfs(path).f_flag & os.ST_RDONLY:
            return None
    except OSError as e:
        return f"{path}: {e.strerror}"
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(None, path.encode(), None, flags, None) != 0:
        code = ctypes.get_errno()
        return f"{path} is read-only and cannot be remounted: {os.strerror(code)}"
    log.info("%s remounted read-write in the plugin's mount namespace (IPVS sysctls)", path)
    return None


def set_sysctl(key: str, value: str) -> bool:
    """Set ``key`` (dotted, e.g. net.ipv4.vs.conntrack) in the calling thread's namespace,
    reading it first and writing only when it differs, so a read-only /proc/sys that already
    holds the value is fine. True when it wrote. Errors are the kernel's OSError (a missing
    key is FileNotFoundError); each caller decides what a refusal means."""
    path = Path("/proc/sys", *key.split("."))
    if path.read_text().strip() == value:
        return False
    path.write_text(value)
    return True
