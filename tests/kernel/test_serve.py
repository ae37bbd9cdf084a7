"""`swarmnet serve`: the real server (one process, waitress) on a real unix socket, netlink
kernel, SQLite store, inside a throwaway network namespace standing in for the host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driver import names
from plugin.unixhttp import UnixHTTPConnection
from tests.kernel.lab import ipr_in

pytestmark = pytest.mark.kernel

NET = "q1w2e3r4t5y6u7i8o9p0asdfg"
EP = "e" * 64


def call(sock: Path, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    conn = UnixHTTPConnection(sock, timeout=30)
    try:
        # Like dockerd: POST, no Content-Type.
        conn.request("POST", path, body=data, headers={"Content-Length": str(len(data))})
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, json.loads(text) if text else None
    finally:
        conn.close()


class Server:
    def __init__(self, netns: str, tmp: Path) -> None:
        self.netns = netns
        self.socket = tmp / "p.sock"
        self.state = tmp / "state"
        self.run = tmp / "run"
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "VNI_RANGE": "300-310", "LOG_LEVEL": "info"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    # nsenter, not `ip netns exec`: that one also makes a private mount
                    # namespace, which would hide the namespaces the server bind-mounts.
                    "nsenter",
                    f"--net=/run/netns/{self.netns}",
                    sys.executable,
                    "-m",
                    "plugin.cli",
                    "serve",
                    "--socket",
                    str(self.socket),
                    "--state-dir",
                    str(self.state),
                    "--run-dir",
                    str(self.run),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if self.socket.exists():
                try:
                    if call(self.socket, "/Plugin.Activate")[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError("server did not come up:\n" + self.log.read_text())

    def stop(self) -> float:
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0, self.log.read_text()
        took = time.monotonic() - started
        print(f"SIGTERM to exit: {took:.3f} s")
        return took


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    netns = f"snserve-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    srv = Server(netns, tmp_path)
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(10)
        netns_dir = srv.run / "netns"
        if netns_dir.is_dir():
            for entry in netns_dir.iterdir():
                subprocess.run(["umount", "-l", str(entry)], check=False, capture_output=True)
                entry.unlink(missing_ok=True)
        subprocess.run(["ip", "netns", "del", netns], check=False)


def links_in(netns_path: str) -> set[str]:
    with ipr_in(Path(netns_path)) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_serve_end_to_end_on_a_unix_socket(server: Server) -> None:
    server.start()
    sock = server.socket
    assert call(sock, "/Plugin.Activate") == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})
    assert call(sock, "/NetworkDriver.GetCapabilities")[1]["Scope"] == "global"

    status, reply = call(sock, "/NetworkDriver.AllocateNetwork", {"NetworkID": NET, "Options": {}})
    assert status == 200
    vni = reply["Options"]["swarmnet.vni"]
    create = {
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"swarmnet.vni": vni}},
        "IPv4Data": [{"Pool": "10.30.0.0/24", "Gateway": "10.30.0.1/24"}],
    }
    assert call(sock, "/NetworkDriver.CreateNetwork", create)[0] == 200
    ns_path = server.run / "netns" / names.netns(NET)
    assert {"br0", "vxlan0"} <= links_in(str(ns_path))

    ep = {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.30.0.2/24"}}
    assert call(sock, "/NetworkDriver.CreateEndpoint", ep) == (
        200,
        {"Interface": {"MacAddress": "02:42:0a:1e:00:02"}},
    )
    status, joined = call(
        sock, "/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x"}
    )
    assert status == 200
    host_ns = f"/run/netns/{server.netns}"
    assert joined["InterfaceName"]["SrcName"] in links_in(host_ns)

    # The operator's view, through the CLI on the same socket.
    out = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "status", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    row = next(line for line in out.splitlines() if line.startswith(NET))
    assert row.split()[1:6] == [vni, "1450", "1", "1", "0"], out

    # Malformed input: 4xx naming the field, never a traceback, nothing made.
    for raw, field in [
        (b"{oops", "JSON"),
        (b'{"NetworkID": 1}', "NetworkID"),
        (b'{"NetworkID": "' + NET.encode() + b'", "IPv4Data": [{"Pool": "bad"}]}', "Pool"),
    ]:
        status, reply = call(sock, "/NetworkDriver.CreateNetwork", raw=raw)
        assert 400 <= status < 500 and field in reply["Err"], reply
    status, reply = call(sock, "/IpamDriver.RequestPool", raw=b'{"Pool": "10.0.0.0/99"}')
    assert status == 400 and "Pool" in reply["Error"]
    assert call(sock, "/NetworkDriver.Nope")[0] == 404

    # SIGTERM must not cost Docker its 10 s kill timeout: it takes well under 1 s when idle.
    assert server.stop() < 2
    assert not sock.exists()

    # A restart finds its state and the network namespace still in place.
    server.start()
    assert {"br0", "vxlan0", names.veth_bridge(EP)} <= links_in(str(ns_path))
    info = call(sock, "/NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
    assert info[1]["Value"]["joined"] is True

    for path in ("/NetworkDriver.Leave", "/NetworkDriver.DeleteEndpoint"):
        assert call(sock, path, {"NetworkID": NET, "EndpointID": EP})[0] == 200
    assert call(sock, "/NetworkDriver.DeleteNetwork", {"NetworkID": NET})[0] == 200
    assert not ns_path.exists()
    assert not any(n.startswith(names.PREFIX) for n in links_in(host_ns))
    assert server.stop() < 2
