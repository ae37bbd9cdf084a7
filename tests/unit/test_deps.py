"""Issue 11: every tool the suites, the lab, the bench and the scripts call comes from a
package scripts/deps.sh installs, or from Debian's required base (what debootstrap's
minbase and every Debian 12 install have).

``make test`` runs ``make deps`` first, so on a fresh machine a tool missing here means a
suite that errors (``lab up: missing /usr/bin/etcdctl``). Each tool is found on the system
PATH and mapped to its package with ``dpkg -S``, as a user would. The tools are named in
TOOLS below; absolute paths in the sources (``"/usr/bin/etcdctl"``) are also collected
automatically, so a new one cannot slip past the list. A tool that is not installed fails
the test too: deps.sh has not installed it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPS = REPO / "scripts" / "deps.sh"
# The suites call Debian's tools (the lab's PATH; DOCKER is /usr/bin/docker, the 20.10
# client that matches the daemon), never whatever /usr/local may hold.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# What calls each tool (bare names are looked up on the system PATH).
TOOLS = {
    "docker": "tests/e2e, tests/lab, bench, scripts/install.sh, scripts/bundle.sh",
    "dockerd": "tests/e2e, tests/lab, bench, scripts/demo.sh",
    "etcd": "tests/integration, tests/lab, bench/scale_sim (testbed/etcdserver.py)",
    "etcdctl": "tests/lab (lab.py)",
    "docker-registry": "tests/e2e/test_local.py (make push)",
    "busybox": "tests/e2e, tests/lab (the containers' image)",
    "debootstrap": "scripts/base-image.sh, tests/e2e",
    "iperf3": "bench/dataplane.py",
    "tcpdump": "tests/kernellab/netlab.py",
    "ping": "tests/lab/test_lab.py, tests/kernellab, bench/dataplane.py",
    "ip": "tests/e2e, tests/lab, tests/kernel, tests/kernellab, bench",
    "bridge": "tests/lab/test_multihost.py, bench/scale.py",
    "ss": "bench/dataplane.py",
    "perf": "bench/datapath_profile.py",
    "iptables": "tests/e2e/test_swarm.py",
    "nft": "the load balancer's kernel tests (driver/kernel/lb)",
    "ipvsadm": "the load balancer's kernel tests (driver/kernel/lb)",
    "sysctl": "tests/e2e/test_swarm.py",
    "modprobe": "tests/kernel, tests/kernellab",
    "nsenter": "tests/e2e, tests/lab, bench",
    "unshare": "tests/lab/lab.py",
    "mount": "tests/lab/lab.py, scripts/host-prep.sh",
    "umount": "tests/e2e, tests/kernel, tests/lab",
    "findmnt": "tests/e2e",
    "curl": "tests/e2e/test_local.py",
    "make": "tests/e2e, tests/lab, bench (make install, make plugin)",
    "tar": "scripts/base-image.sh, scripts/bundle.sh",
    "chroot": "scripts/base-image.sh",
    "timeout": "scripts/install.sh, scripts/demo.sh, bench",
    "stat": "tests/lab/lab.py",
    "hostname": "tests/lab/lab.py",
    "awk": "scripts/base-image.sh",
    "sha256sum": "scripts/base-image.sh",
    "apt-get": "scripts/deps.sh",
    "prometheus": "tests/e2e/test_metrics.py (a real Prometheus scrapes the plugin)",
    "promtool": "tests/unit/test_alerts.py (docs/alerts.yml)",
    "openssl": "tests/integration/test_relay.py (testbed/relay.py: a TLS relay's test PKI)",
}

ABSOLUTE = re.compile(r"""["'](/(?:usr/)?s?bin/[A-Za-z0-9._+-]+)["']""")


def listed_packages() -> set[str]:
    """The full list of scripts/deps.sh (its first ``packages=( ... )``)."""
    m = re.search(r"^packages=\(([^)]*)\)", DEPS.read_text(), re.M)
    assert m, f"{DEPS}: no packages=( ... ) list"
    return set(m.group(1).split())


def absolute_paths_in_sources() -> dict[str, str]:
    found: dict[str, str] = {}
    for root in ("tests", "bench", "scripts"):
        for path in sorted((REPO / root).rglob("*")):
            if path.suffix not in (".py", ".sh") or not path.is_file():
                continue
            for m in ABSOLUTE.finditer(path.read_text(errors="replace")):
                found.setdefault(m.group(1), str(path.relative_to(REPO)))
    return found


def candidates(path: str) -> list[str]:
    """The names dpkg may know ``path`` by: merged-/usr systems ship /bin/x as /usr/bin/x."""
    out = [path]
    for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
        if path.startswith(a):
            out.append(b + path[len(a) :])
        elif path.startswith(b):
            out.append(a + path[len(b) :])
    return out


@cache
def owner(path: str) -> str | None:
    """The package that ships ``path`` (symlinks followed), per dpkg."""
    for p in dict.fromkeys([*candidates(path), *candidates(os.path.realpath(path))]):
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True, check=False)
        if r.returncode == 0:
            # "pkg: /path" or "pkg1, pkg2: /path"; diversions read "diversion by ...".
            for line in r.stdout.splitlines():
                if not line.startswith("diversion "):
                    return line.split(":", 1)[0].split(",")[0].strip()
    return None


@cache
def base_system(package: str) -> bool:
    """Essential, or Priority required: part of every Debian install (debootstrap minbase)."""
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential} ${Priority}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        return False
    essential, _, priority = r.stdout.partition(" ")
    return essential == "yes" or priority.strip() == "required"


@pytest.fixture(scope="module", autouse=True)
def debian() -> None:
    # deps.sh is apt-only: on a machine without dpkg it cannot have installed anything.
    if shutil.which("dpkg") is None:
        pytest.fail("no dpkg: scripts/deps.sh supports Debian and Ubuntu only")


def test_every_absolute_tool_path_in_the_sources_is_in_the_list() -> None:
    unlisted = {
        p: where for p, where in absolute_paths_in_sources().items() if Path(p).name not in TOOLS
    }
    assert not unlisted, f"add these tools to TOOLS (and their package to deps.sh): {unlisted}"


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tool_comes_from_a_package_deps_sh_installs(tool: str) -> None:
    path = shutil.which(tool, path=SYSTEM_PATH)
    assert path is not None, (
        f"{tool} (used by {TOOLS[tool]}) is not installed: scripts/deps.sh installs no package "
        "that provides it"
    )
    package = owner(path)
    assert package is not None, f"{tool}: {path} belongs to no Debian package (dpkg -S)"
    assert package in listed_packages() or base_system(package), (
        f"{tool} ({path}, used by {TOOLS[tool]}) comes from package {package}, which "
        "scripts/deps.sh does not install: add it to the packages list"
    )


def test_the_check_tells_listed_base_and_other_packages_apart() -> None:
    # The ones deps.sh added for issue 11 are neither base system nor listed by accident.
    added = (("etcdctl", "etcd-client"), ("ipvsadm", "ipvsadm"), ("ping", "iputils-ping"))
    for tool, package in added:
        path = shutil.which(tool, path=SYSTEM_PATH)
        assert path is not None and owner(path) == package
        assert package in listed_packages() and not base_system(package)
    assert base_system("coreutils") and base_system("mount")
    assert not base_system("no-such-package-swarmnet")
