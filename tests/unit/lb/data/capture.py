"""Capture the Docker Engine API responses the LB unit tests replay (see README.md here).

Run as root from the repository root: ``.venv/bin/python -m tests.unit.lb.data.capture``
(``SWARMNET_SRC=DIR``: build and install the plugin from the checkout in DIR instead).
It stands up a throw-away dockerd in a network namespace (tests/e2e/dockerhost.py), makes it
a single-node swarm manager, installs the managed plugin, creates services on two swarmnet
networks and writes what ``docker.APIClient`` returns into this directory. Everything it
made is torn down at the end, also after a failure.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from plugin.swarmview import SwarmView
from tests.e2e.dockerhost import IMAGE, REPO, DockerHost, HostError, run, wait_for

# SWARMNET_CAPTURE_OUT: write somewhere else (e.g. to check a change without new test data).
OUT = Path(os.environ.get("SWARMNET_CAPTURE_OUT") or Path(__file__).resolve().parent)
PLUGIN = "swarmnet-overlay:latest"


def write(name: str, value: Any) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    print(f"wrote {name}", flush=True)


def snapshot(phase: str, view: SwarmView) -> None:
    write(f"services-{phase}.json", view.services())
    write(f"tasks-{phase}.json", view.tasks())


def service(host: DockerHost, name: str, *args: str) -> None:
    host.docker(
        "service", "create", "--detach", "--no-resolve-image", "--name", name,
        "--restart-condition", "any", *args, IMAGE, "sleep", "86400", timeout=120,
    )  # fmt: skip


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="lbcap-", dir="/tmp"))
    host = DockerHost(work, "lbcap")
    try:
        host.up()
        host.import_busybox()
        host.swarm_init()
        # SWARMNET_SRC: build the plugin from another checkout (e.g. `git archive HEAD`), so
        # a capture does not depend on the state of this working tree.
        src = Path(os.environ.get("SWARMNET_SRC", str(REPO)))
        run(
            ["make", "-C", str(src), "install", f"STATE_DIR={host.state_dir}",
             f"RUN_DIR={host.run_dir}", "PLUGIN_SETTINGS=LOG_LEVEL=debug",
             f"BASE_CACHE={REPO / 'build' / 'base'}"],
            env=host.env, timeout=1200,
        )  # fmt: skip
        host.plugin_id()  # remembered for the teardown
        view = SwarmView(f"unix://{host.socket}")
        assert view.is_manager(), "a swarm manager must say so"
        for net in ("lbnet1", "lbnet2"):
            host.docker(
                "network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--attachable", net
            )  # fmt: skip
        # Busybox's sleep as PID 1 ignores SIGTERM, so a task asked to stop keeps running
        # for its whole grace period: that is the window in which we see it draining.
        service(host, "web", "--network", "lbnet1", "--replicas", "3",
                "--stop-grace-period", "20s")  # fmt: skip
        service(host, "rr", "--network", "lbnet1", "--replicas", "2", "--endpoint-mode", "dnsrr")
        service(host, "pub", "--network", "lbnet1", "--network", "lbnet2", "--replicas", "2",
                "--publish", "8080:80", "--stop-grace-period", "20s")  # fmt: skip

        def tasks_of(name: str) -> list[dict[str, Any]]:
            sid = {s["Spec"]["Name"]: s["ID"] for s in view.services()}[name]
            return [t for t in view.tasks() if t["ServiceID"] == sid]

        def running(t: dict[str, Any]) -> bool:
            return bool(t["Status"]["State"] == "running")

        def settled() -> bool:
            tasks = [t for t in view.tasks() if t["DesiredState"] == "running"]
            return len(tasks) == 7 and all(running(t) for t in tasks)

        wait_for("7 running tasks", settled, 180, interval=0.5)
        since = int(time.time()) - 1
        swarm = view._client().info()["Swarm"]
        swarm["Cluster"]["TLSInfo"] = {"removed": "the throw-away swarm's CA certificate and key"}
        write("info.json", {"Swarm": swarm})
        write("networks.json", view._client().networks())
        snapshot("1-running", view)

        # The event wait must see a service update (the scale) made while it waits.
        while view.wait_for_change(0):  # skip what happened so far
            pass
        host.docker("service", "scale", "--detach", "web=1")
        assert view.wait_for_change(10), "no service event after docker service scale"

        def draining() -> bool:
            stopping = [t for t in tasks_of("web") if t["DesiredState"] != "running"]
            return len(stopping) == 2 and all(running(t) for t in stopping)

        wait_for("2 web tasks running with desired state shutdown", draining, 30, interval=0.2)
        snapshot("2-draining", view)

        def stopped() -> bool:
            return sum(running(t) for t in tasks_of("web")) == 1

        wait_for("the 2 stopped web tasks gone", stopped, 60, interval=0.5)
        snapshot("3-scaled", view)

        host.docker("service", "rm", "pub")

        def pub_removing() -> bool:
            return "pub" not in {s["Spec"]["Name"] for s in view.services()}

        wait_for("pub removed", pub_removing, 30, interval=0.2)
        snapshot("4-removed", view)
        events = view._client().events(
            since=since, until=int(time.time()) + 1, filters={"type": ["service", "node"]},
            decode=True,
        )  # fmt: skip
        write("events.json", list(events))
        write("version.json", view._client().version())
        view.close()
        return 0
    except HostError as e:
        print(f"capture failed: {e}\n{host.tail(40)}", file=sys.stderr)
        return 1
    finally:
        host.down()
        left = {k: v for k, v in host.leftovers().items() if v}
        if left:
            print(f"left behind: {left}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
