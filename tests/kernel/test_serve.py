"""`swarmnet serve`: the real server (gunicorn's arbiter and one worker) on a real unix
socket, netlink kernel, SQLite store, inside a throwaway network namespace standing in for
the host."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from driver import names
from testbed.serve import Server, call, scratch_server
from tests.kernel.lab import ipr_in

pytestmark = pytest.mark.kernel

NET = "q1w2e3r4t5y6u7i8o9p0asdfg"
EP = "e" * 64


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with scratch_server(tmp_path) as srv:
        yield srv


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

    # SIGTERM must not cost Docker its 10 s kill timeout: it takes well under 1 s when idle
    # (tests/unit/test_server.py holds it to that; here a loaded machine gets some slack).
    assert server.stop() < 2
    assert not sock.exists()
    assert server.log_lines("stopped: services closed")

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


def test_a_killed_worker_is_replaced_and_reconciles(server: Server) -> None:
    server.start()
    sock = server.socket
    create = {
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"swarmnet.vni": "301"}},
        "IPv4Data": [{"Pool": "10.31.0.0/24", "Gateway": "10.31.0.1/24"}],
    }
    assert call(sock, "/NetworkDriver.CreateNetwork", create)[0] == 200
    ns_path = server.run / "netns" / names.netns(NET)
    assert len(server.log_lines(r"reconcile: \d+ change")) == 1

    first = server.worker()
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    # The arbiter keeps the socket: the next call waits for the new worker, is not refused.
    assert call(sock, "/Plugin.Activate")[0] == 200
    took = time.monotonic() - killed
    print(f"kill -9 of the worker to the next answer: {took:.3f} s")
    assert took < 2
    assert server.worker() != first
    # The new worker built the app again: a reconcile like a fresh start, state intact.
    assert len(server.log_lines(r"reconcile: \d+ change")) == 2
    assert {"br0", "vxlan0"} <= links_in(str(ns_path))
    assert call(sock, "/NetworkDriver.DeleteNetwork", {"NetworkID": NET})[0] == 200
    assert not ns_path.exists()
    assert server.stop() < 2


def scrape_in(netns: str, url: str) -> str:
    """GET ``url`` from inside the server's network namespace (where it listens)."""
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "curl", "-sf", "--max-time", "3", url],
        capture_output=True, text=True, check=False,
    )
    return done.stdout if done.returncode == 0 else ""


def test_serve_honours_metrics_addr_and_a_new_worker_listens_again(server: Server) -> None:
    # Issue 15. The server's own namespace: no other process has the port.
    with ipr_in(Path(f"/run/netns/{server.netns}")) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    server.start(METRICS_ADDR="127.0.0.1:9474")
    url = "http://127.0.0.1:9474/metrics"
    create = {
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"swarmnet.vni": "302"}},
        "IPv4Data": [{"Pool": "10.32.0.0/24", "Gateway": "10.32.0.1/24"}],
    }
    assert call(server.socket, "/NetworkDriver.CreateNetwork", create)[0] == 200
    ep = {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.32.0.2/24"}}
    assert call(server.socket, "/NetworkDriver.CreateEndpoint", ep)[0] == 200
    text = scrape_in(server.netns, url)
    assert f'swarmnet_endpoints{{network="{NET}"}} 1.0' in text, text[-2000:]
    assert (
        'swarmnet_protocol_call_duration_seconds_count{method="NetworkDriver.CreateNetwork",'
        'outcome="ok"} 1.0' in text
    )
    first = server.worker()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline and "swarmnet_endpoints{" not in text:
        time.sleep(0.2)
        text = scrape_in(server.netns, url)
    assert server.worker() != first
    # The new worker's registry: the state is read again, the call counts start afresh.
    assert f'swarmnet_endpoints{{network="{NET}"}} 1.0' in text, text[-2000:]
    assert 'method="NetworkDriver.CreateNetwork"' not in text
    for path in ("/NetworkDriver.DeleteEndpoint",):
        assert call(server.socket, path, {"NetworkID": NET, "EndpointID": EP})[0] == 200
    assert call(server.socket, "/NetworkDriver.DeleteNetwork", {"NetworkID": NET})[0] == 200
    assert server.stop() < 2
    assert scrape_in(server.netns, url) == ""  # the stop closed it


ACCESS = re.compile(
    r"^(\S+ \S+) DEBUG swarmnet.access: POST /NetworkDriver.CreateNetwork 200 ([\d.]+) ms"
)


def test_sixteen_calls_on_different_networks_overlap_in_time(server: Server) -> None:
    server.start(log_level="debug")  # the access log: one line per call, with its duration
    sock = server.socket
    nets = [f"{i:02x}" + NET[2:] for i in range(16)]

    def create(i: int) -> None:
        body = {
            "NetworkID": nets[i],
            "Options": {"com.docker.network.generic": {"swarmnet.vni": str(310 + i)}},
            "IPv4Data": [{"Pool": f"10.40.{i}.0/24", "Gateway": f"10.40.{i}.1/24"}],
        }
        barrier.wait()
        replies.append(call(sock, "/NetworkDriver.CreateNetwork", body)[0])

    barrier = threading.Barrier(16)
    replies: list[int] = []
    threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert replies == [200] * 16

    # The server's own view of each call: it ended at the log line, after its duration.
    spans = []
    for line in server.log_lines("swarmnet.access: POST /NetworkDriver.CreateNetwork"):
        match = ACCESS.match(line)
        assert match, line
        ended = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        spans.append((ended - float(match.group(2)) / 1000, ended))
    assert len(spans) == 16
    took = sorted(e - s for s, e in spans)
    print(f"16 CreateNetwork at once: {took[0] * 1000:.0f} to {took[-1] * 1000:.0f} ms each")
    # Every call had started before the first one ended: all 16 were in flight at once.
    assert max(s for s, _ in spans) < min(e for _, e in spans)

    for net in nets:
        assert call(sock, "/NetworkDriver.DeleteNetwork", {"NetworkID": net})[0] == 200
    assert server.stop() < 2
