"""Encrypted networks through the protocol on whatever kernel runs the test (root).

On the development host (no ESP, no GCM) the network must fail closed: nothing
is built for it (no namespace, no link, no xfrm object, no record, no key) and
Join refuses with a message naming what the kernel lacks. Inside kernel-lab the same call
must work, and DeleteNetwork must leave nothing either. What to expect is read
from the kernel's build configuration, not from probe().
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driver import names
from driver.kernel.ipsec import NetlinkIpsec
from plugin.store.memory import MemoryKV
from tests.kernel.lab import NetlinkHost
from tests.kernellab.test_xfrm_host_kernel import expected_missing

pytestmark = pytest.mark.kernel

NET = "q1w2e3r4t5y6u7i8o9p0asdfg"
MISSING_CONFIG = {
    "xfrm_user": "CONFIG_XFRM_USER",
    "esp4": "CONFIG_INET_ESP",
    "rfc4106(gcm(aes))": "CONFIG_CRYPTO_GCM",
}


@dataclasses.dataclass
class Plugin:
    host: NetlinkHost
    ipsec: NetlinkIpsec
    store: MemoryKV
    client: Any

    def call(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        resp = self.client.post(path, json=body)
        return resp.status_code, resp.get_json(force=True, silent=True)

    def ip_xfrm(self) -> str:
        return "".join(
            subprocess.run(
                ["nsenter", f"--net={self.host.ns}", "ip", "xfrm", what],
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout
            for what in ("state", "policy")
        )  # fmt: skip


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    from plugin.app import create_app  # Flask is slow to import under emulation
    from plugin.settings import from_env

    host = NetlinkHost(tmp_path / "lab")
    ipsec = NetlinkIpsec(host.ns)
    store = MemoryKV()
    try:
        base = from_env({"DATA_PATH_ADDR": "192.0.2.1", "MTU": "1500"})
        settings = dataclasses.replace(base, run_dir=tmp_path / "run")
        app = create_app(settings, kernel=host.kernel, local=store, shared=store, ipsec=ipsec)
        try:
            yield Plugin(host, ipsec, store, app.test_client())
        finally:
            app.extensions["swarmnet"].network.encryption.close()
    finally:
        ipsec.close()
        host.close()


def body() -> dict[str, Any]:
    return {
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"swarmnet.vni": "300", "encrypted": ""}},
        "IPv4Data": [{"Pool": "10.30.0.0/24", "Gateway": "10.30.0.1/24"}],
    }


def assert_nothing_left(p: Plugin) -> None:
    assert p.host.kernel.network_ids() == set()
    assert p.host.our_links() == set()
    assert p.ipsec.list_sas() == [] and p.ipsec.list_policies() == []
    assert p.ip_xfrm().strip() == ""
    assert p.store.list("/swarmnet/v1/local/networks/") == {}


def test_encrypted_network_fails_closed_or_works_as_the_kernel_allows(plugin: Plugin) -> None:
    missing = expected_missing()
    status, reply = plugin.call("/NetworkDriver.CreateNetwork", body())
    if missing:
        # Swarm scope: the node takes the network but builds nothing for it, and refuses
        # its endpoints at Join, where the reason reaches `docker service ps` and
        # `docker run` (a refused CreateNetwork reaches nobody in swarm).
        assert status == 200, reply
        assert_nothing_left(plugin)
        assert plugin.store.list("/swarmnet/v1/ipsec/") == {}
        endpoint = {"NetworkID": NET, "EndpointID": "e" * 64}
        status, reply = plugin.call(
            "/NetworkDriver.CreateEndpoint", {**endpoint, "Interface": {"Address": "10.30.0.2/24"}}
        )
        assert status == 200, reply
        status, reply = plugin.call("/NetworkDriver.Join", {**endpoint, "SandboxKey": "/x"})
        assert status == 501, reply
        message = reply["Err"]
        assert "--opt encrypted" in message and "in clear" in message
        for piece in missing:
            assert piece in message and MISSING_CONFIG[piece] in message, message
        assert_nothing_left(plugin)
        assert plugin.store.list("/swarmnet/v1/ipsec/") == {}
        status, reply = plugin.call("/NetworkDriver.DeleteEndpoint", endpoint)
        assert status == 200, reply
        status, reply = plugin.call("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
        assert status == 200, reply
        assert plugin.store.list("/swarmnet/v1/local/") == {}
        return
    assert status == 200, reply
    assert names.short(NET) in plugin.host.kernel.network_ids()
    assert "dport 4790" in plugin.ip_xfrm()
    status, reply = plugin.call("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert status == 200, reply
    assert_nothing_left(plugin)
