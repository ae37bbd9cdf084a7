"""Build the plugin bundle on the host before the VM boots: ``python -m tests.vmswarm.build``.

``make plugin`` needs a dockerd for ``docker build``. When the bundle is stale this starts a
throwaway one (the e2e test bed's :class:`DockerHost`, in a network namespace of its own),
runs ``make plugin`` against it and tears it down. When the bundle is up to date it does
nothing. It also writes ``build/plugin.tar`` (``config.json`` + ``rootfs/``, the build
context ``docker plugin create`` sends), which the VM reads as one file instead of walking
thousands of small files over 9p.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.dockerhost import REPO, DockerHost
from testbed.proc import BedError as HostError
from testbed.proc import run

BUNDLE = REPO / "build" / "plugin"
STAMP = REPO / "build" / ".plugin"
TARBALL = REPO / "build" / "plugin.tar"
# Not "sne2e-": the e2e session's stale-host cleanup must not take this dockerd for one of
# its own dead hosts.
NETNS_PREFIX = "snvmbuild-"


def bundle_fresh() -> bool:
    """``make -q plugin`` (``-o venv``: that phony step would always count as stale)."""
    proc = subprocess.run(
        ["make", "-q", "-o", "venv", "-C", str(REPO), "plugin"], capture_output=True, check=False
    )
    return proc.returncode == 0 and (BUNDLE / "rootfs").is_dir()


def build_bundle(log: Path | None = None) -> float:
    """``make plugin`` on a throwaway dockerd; returns the seconds it took."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="snvmb-") as tmp:
        host = DockerHost(Path(tmp), "build", netns_prefix=NETNS_PREFIX)
        try:
            host.up()
            out = host.make("plugin", timeout=1500)
            print(out.stdout[-2000:], end="")
        except HostError as e:
            raise HostError(f"{e}\ndockerd log:\n{host.tail(40)}") from e
        finally:
            if log is not None and host.log.is_file():
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_bytes(host.log.read_bytes())
            host.down()
            left = {k: v for k, v in host.leftovers().items() if v}
            if left:
                raise HostError(f"build dockerd left things behind: {left}")
    return time.monotonic() - start


def write_tarball() -> None:
    """build/plugin.tar, rebuilt when the bundle is newer."""
    if TARBALL.is_file() and TARBALL.stat().st_mtime >= STAMP.stat().st_mtime:
        return
    tmp = TARBALL.with_suffix(".tar.tmp")
    run(
        ["tar", "--numeric-owner", "-C", str(BUNDLE), "-cf", str(tmp), "config.json", "rootfs"],
        timeout=300,
    )
    tmp.replace(TARBALL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("tests.vmswarm.build: needs root (dockerd, namespaces)", file=sys.stderr)
        return 1
    if args.force or not bundle_fresh():
        took = build_bundle(REPO / "build" / "vmswarm" / "build-dockerd.log")
        print(f"plugin bundle built in {took:.0f}s")
    else:
        print("plugin bundle up to date")
    write_tarball()
    size = run(["du", "-sh", str(BUNDLE / "rootfs")], timeout=60).stdout.split()[0]
    print(f"bundle: {BUNDLE} (rootfs {size}), tarball {TARBALL.stat().st_size >> 20} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
