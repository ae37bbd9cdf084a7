"""The one image every bed uses: static busybox, imported from a tar (no registry is reachable)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

BUSYBOX = "/bin/busybox"  # from busybox-static
IMAGE = "busybox:latest"


def busybox_tar(dest: Path) -> Path:
    """A minimal root filesystem: static busybox plus one symlink per applet."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    with tarfile.open(dest, "w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "proc", "sys", "dev", "run", "var"):
            add_dir(d)
        add_dir("root", 0o700)
        add_dir("tmp", 0o1777)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets.stdout.split():
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                 b"nobody:x:65534:65534::/:/bin/false\n")  # fmt: skip
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return dest


def import_busybox(docker: Callable[..., object], tar: Path) -> None:
    """``docker import`` the image through ``docker`` (a dockerd's CLI)."""
    docker("import", "--change", 'CMD ["sh"]', str(tar), IMAGE, timeout=120)
