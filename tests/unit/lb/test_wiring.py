"""Load balancing inside the app: a Join through the protocol gets its sandbox
programmed, status shows it, and the switches turn it off (plugin.app wiring)."""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from core.layout import StoreLayout
from driver.kernel.fake import FakeKernel
from driver.kernel.fake_lb import FakeLoadBalancer
from driver.lb.model import Backend, ServiceRecord, mark
from plugin import cli
from plugin.app import STORE_ROOT, create_app
from plugin.settings import from_env
from plugin.store.memory import MemoryKV
from tests.unit.conftest import fixture

LAYOUT = StoreLayout(STORE_ROOT)

LOCAL = {"SCOPE": "local", "SANDBOX_ROOT": ""}


def app_with(lb: FakeLoadBalancer, env: dict[str, str], store: MemoryKV) -> Any:
    return create_app(
        from_env(env), kernel=FakeKernel(), local=store, shared=store, load_balancer=lb
    )


def post(client: Any, path: str, body: Any) -> Any:
    resp = client.post(path, json=body)
    assert resp.status_code == 200, (path, resp.get_json())
    return resp.get_json()


def eventually(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def cli_status(app: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What `swarmnet status` prints against this app on a real unix socket."""
    from werkzeug.serving import make_server

    sock = tmp_path / "p.sock"
    server = make_server(f"unix://{sock}", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        capsys.readouterr()
        assert cli.main(["status", "--socket", str(sock)]) == 0
    finally:
        server.shutdown()
        thread.join(5)
    return capsys.readouterr().out


def test_a_join_gets_its_sandbox_programmed_and_status_shows_the_vip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lb, store = FakeLoadBalancer(), MemoryKV()
    app = app_with(lb, LOCAL, store)
    try:
        client = app.test_client()
        join = fixture("NetworkDriver.Join.local-run.json")
        create = fixture("NetworkDriver.CreateNetwork.local.json")
        endpoint = fixture("NetworkDriver.CreateEndpoint.local-run.json")
        post(client, "/NetworkDriver.CreateNetwork", create)
        post(client, "/NetworkDriver.CreateEndpoint", endpoint)
        web = ServiceRecord(
            network_id=create["NetworkID"],
            service_id="s" * 25,
            name="web",
            vip=ipaddress.IPv4Address("10.0.1.2"),
            fwmark=mark(1),
            backends=(Backend(ipaddress.IPv4Address("10.0.1.3")),),
        )
        store.put(LAYOUT.lb_service(web.network_id, web.service_id), web.to_json())
        sandbox = Path(join["SandboxKey"])
        post(client, "/NetworkDriver.Join", join)
        lb.add_sandbox(sandbox)  # Docker binds the namespace after Join returns
        eventually(lambda: lb.sandboxes.get(sandbox) == (web.virtual_service(),), "programmed")
        status = post(client, "/Swarmnet.Status", {})["LoadBalancing"]
        assert status["State"] == "on"
        (net,) = status["Networks"]
        assert net["Services"][0]["VIP"] == "10.0.1.2"
        assert net["SandboxesProgrammed"] == 1
        out = cli_status(app, tmp_path, capsys)
        assert "load balancing: on; sandboxes programmed 1" in out, out
        assert f"network {create['NetworkID'][:12]}: 1 sandbox(es) programmed" in out, out
        assert re.search(r"^\s+web\s+10\.0\.1\.2\s+10\.0\.1\.3\*1$", out, re.M), out
        post(client, "/NetworkDriver.Leave", {k: join[k] for k in ("NetworkID", "EndpointID")})
        eventually(lambda: lb.sandboxes.get(sandbox) == (), "cleared after Leave")
    finally:
        app.extensions["swarmnet"].close()


def test_a_kernel_without_ipvs_turns_it_off_with_the_reason_in_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = app_with(FakeLoadBalancer(unavailable="the kernel has no IPVS"), LOCAL, MemoryKV())
    try:
        status = post(app.test_client(), "/Swarmnet.Status", {})["LoadBalancing"]
        assert status == {"State": "off", "Reason": "the kernel has no IPVS"}
        assert "load balancing: off (the kernel has no IPVS)" in cli_status(app, tmp_path, capsys)
    finally:
        app.extensions["swarmnet"].close()


def test_the_setting_turns_it_off() -> None:
    lb = FakeLoadBalancer()
    app = app_with(lb, {**LOCAL, "LOAD_BALANCING": "off"}, MemoryKV())
    try:
        status = post(app.test_client(), "/Swarmnet.Status", {})["LoadBalancing"]
        assert status["State"] == "off" and "LOAD_BALANCING" in status["Reason"]
        assert lb.calls == []
    finally:
        app.extensions["swarmnet"].close()
