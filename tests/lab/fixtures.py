"""pytest fixtures for the multi-host lab. Other suites re-export them from their conftest:

    from tests.lab.fixtures import lab_factory, require_lab  # noqa: F401
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.proc import unavailable
from tests.lab.lab import DOCKER, DOCKERD, ETCD, Lab


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    return unavailable("the multi-host lab needs", "network namespaces, mounts, cgroups",
                       (DOCKER, DOCKERD, ETCD, "/bin/busybox"), ("ip",))


@pytest.fixture(scope="session")
def require_lab() -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab_factory(require_lab: None, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Callable[..., Lab]]:
    """``lab_factory(nodes=3, **kwargs) -> Lab`` (already up). Every lab made is torn down at
    the end of the session, and the session fails if anything of it is left behind.

    Labs are named after this process, so they never collide with a lab made by hand."""
    made: list[Lab] = []

    def make(nodes: int = 3, **kwargs: Any) -> Lab:
        kwargs.setdefault("name", f"t{os.getpid() % 100000}{len(made) or ''}")
        kwargs.setdefault("workdir", tmp_path_factory.mktemp("lab"))
        lab = Lab(nodes, **kwargs)
        made.append(lab)
        lab.up()
        return lab

    yield make
    problems = {}
    for lab in made:
        lab.down()
        left = {k: v for k, v in lab.leftovers().items() if v}
        if left:
            problems[lab.name] = left
    assert not problems, f"lab teardown left things behind: {problems}"


def plugin_build() -> Path | None:
    """``build/plugin`` (made by `make plugin`) when it exists."""
    path = Path(__file__).resolve().parents[2] / "build" / "plugin"
    if (path / "config.json").is_file() and (path / "rootfs").is_dir():
        return path
    return None
