"""Fixtures for the single-host end-to-end tests: real dockerds, the real managed plugin.

Each module gets its own dockerd (see :mod:`tests.e2e.dockerhost`). The first dockerd that
installs the plugin also builds ``build/plugin`` when it is stale (``make plugin`` needs a
dockerd for ``docker build``). Each dockerd's log is kept in ``build/e2e/`` after teardown.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest

from testbed.proc import unavailable
from tests.e2e.dockerhost import (
    BUSYBOX,
    DOCKER,
    DOCKERD,
    REPO,
    DockerHost,
    HostError,
    cleanup_stale,
)

LOG_DIR = REPO / "build" / "e2e"


def e2e_unavailable() -> str | None:
    return unavailable(
        "end-to-end tests need", "dockerd, namespaces, mounts",
        (DOCKER, DOCKERD, BUSYBOX, "/usr/bin/nsenter", "/usr/sbin/debootstrap"),
        ("ip", "findmnt", "make"),
    )  # fmt: skip


@pytest.fixture(scope="session")
def require_e2e() -> None:
    reason = e2e_unavailable()
    if reason:
        pytest.skip(reason)
    stale = cleanup_stale()
    if stale:
        print(f"removed hosts left by an earlier e2e session: {stale}")


@pytest.fixture(scope="session")
def host_factory(
    require_e2e: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., DockerHost]]:
    """``host_factory(name, live_restore=False) -> DockerHost`` (dockerd up, busybox imported).
    Every host is torn down at the end of the module that made it or of the session, and the
    test run fails if anything of it is left behind."""
    made: list[DockerHost] = []

    def make(name: str, **kwargs: object) -> DockerHost:
        # Short paths: plugin and dockerd sockets have a 107-byte limit.
        host = DockerHost(tmp_path_factory.mktemp(f"e2e-{name}"), name, **kwargs)  # type: ignore[arg-type]
        made.append(host)
        host.up()
        host.import_busybox()
        return host

    yield make
    problems = {}
    for host in made:
        teardown(host)
        left = {k: v for k, v in host.leftovers().items() if v}
        if left:
            problems[host.netns] = left
    assert not problems, f"e2e teardown left things behind: {problems}"


def teardown(host: DockerHost) -> None:
    try:
        host.down()
    finally:
        with_log = host.log.is_file()
        if with_log:
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(host.log, LOG_DIR / f"{host.name}-dockerd.log")


def install(host: DockerHost, **settings: str) -> str:
    """Install the plugin (debug logging, so request bodies land in the dockerd log)."""
    try:
        return host.install_plugin({"LOG_LEVEL": "debug", **settings})
    except HostError as e:
        raise HostError(f"{e}\ndockerd log:\n{host.tail(40)}") from e


@pytest.fixture(scope="module")
def swarm_host(host_factory: Callable[..., DockerHost]) -> Iterator[DockerHost]:
    """A single-node swarm manager with the plugin installed (SCOPE=global, the default).
    Swarm mode refuses --live-restore, so dockerd restarts stop containers here."""
    host = host_factory("swarm")
    try:
        host.swarm_init()
        install(host)
        yield host
    finally:
        teardown(host)


@pytest.fixture(scope="module")
def local_host(host_factory: Callable[..., DockerHost]) -> Iterator[DockerHost]:
    """A standalone dockerd (no swarm) with --live-restore and the plugin at SCOPE=local."""
    host = host_factory("local", live_restore=True)
    try:
        install(host, SCOPE="local")
        yield host
    finally:
        teardown(host)
