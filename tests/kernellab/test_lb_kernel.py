"""Service VIP load balancing on a kernel with IPVS: the real adapter, real traffic.

A switch namespace holds a bridge; a client and three backends (t1-t3) are
namespaces on it, 10.99.0.0/24, and every one of them (the client too, for the
hairpin) serves TCP and UDP on two ports with Python sockets, answering with its
own name. ``NetlinkLoadBalancer`` programs the client's namespace; the tests
connect from there to the VIP. The kernel is inspected with ``ipvsadm``, ``nft``
and ``ping`` (tests only) and rtnetlink.

Runs inside kernel-lab::

    KERNEL_LAB_QUIET=1 /work/shared/kernel-lab/run --timeout 900 -- \\
        .venv/bin/python -m pytest -q -m kernellab tests/kernellab/test_lb_kernel.py
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.kernel import lb as lb_module
from driver.kernel import nsfs
from driver.kernel.lb import RULE_PRIORITY, NetlinkLoadBalancer
from driver.lb.model import ROUTE_TABLE, SandboxState, mark, sandbox_state, virtual_service
from driver.lb.port import LoadBalancer, LoadBalancerError
from testbed.netns import plug
from tests.contract.lb_contract import LoadBalancerContract
from tests.kernel.lab import ipr_in, link

pytestmark = pytest.mark.kernellab

PREFIX = 24
CLIENT = ("client", ipaddress.IPv4Address("10.99.0.10"))
BACKENDS = tuple((f"t{i}", ipaddress.IPv4Address(f"10.99.0.1{i}")) for i in (1, 2, 3))
T1, T2, T3 = (addr for _, addr in BACKENDS)
VIP = ipaddress.IPv4Address("10.99.0.100")
PORTS = (8080, 9090)
ASK_TIMEOUT = 3.0  # seconds; bounds a connection that gets no answer


def one_service(backends: dict[ipaddress.IPv4Address, int]) -> SandboxState:
    return sandbox_state([virtual_service(VIP, mark(1), backends)])


def nsrun(path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=60
    )


def new_sandbox(path: Path) -> Path:
    nsfs.create(path)
    with ipr_in(path) as ipr:
        ipr.link("set", index=link(ipr, "lo")["index"], state="up")
    return path


class Servers:
    """TCP and UDP servers on PORTS in one namespace, answering with ``name``."""

    def __init__(self, ns: Path, name: str) -> None:
        self.name = name.encode()
        self.stop = threading.Event()
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        for port in PORTS:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                sock = nsfs.socket_in(ns, socket.AF_INET, kind)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(64)
                self.socks.append(sock)
                self.sel.register(sock, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if sock.type == socket.SOCK_STREAM:
                        conn, _ = sock.accept()
                        with conn:
                            conn.sendall(self.name)
                    else:
                        _, peer = sock.recvfrom(512)
                        sock.sendto(self.name, peer)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()
        self.sel.close()


class Lab:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.switch = root / "switch"
        self.ns: dict[str, Path] = {}
        self.servers: list[Servers] = []
        nsfs.create(self.switch)
        try:
            with ipr_in(self.switch) as ipr:
                ipr.link("add", ifname="br0", kind="bridge")
                ipr.link("set", index=link(ipr, "br0")["index"], state="up")
            for name, addr in (CLIENT, *BACKENDS):
                self.ns[name] = self._node(root / name, name, addr)
                self.servers.append(Servers(self.ns[name], name))
        except BaseException:
            self.close()
            raise

    def _node(self, path: Path, name: str, addr: ipaddress.IPv4Address) -> Path:
        new_sandbox(path)
        plug(self.switch, "br0", path, f"s-{name}", str(addr), PREFIX)
        return path

    @property
    def client(self) -> Path:
        return self.ns["client"]

    def tcp(self, port: int) -> str | None:
        """One new TCP connection from the client to VIP:port; who answered."""
        sock = nsfs.socket_in(self.client, socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(ASK_TIMEOUT)
            try:
                sock.connect((str(VIP), port))
                return sock.recv(64).decode()
            except OSError:
                return None

    def udp(self, port: int) -> str | None:
        """One datagram from a new client socket to VIP:port; who answered (from the VIP)."""
        sock = nsfs.socket_in(self.client, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(ASK_TIMEOUT)
            try:
                sock.sendto(b"?", (str(VIP), port))
                data, peer = sock.recvfrom(64)
            except OSError:
                return None
            assert peer == (str(VIP), port), "the answer must come back from the VIP"
            return data.decode()

    def close(self) -> None:
        for servers in self.servers:
            servers.close()
        for path in [*self.ns.values(), self.switch]:
            nsfs.remove(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    made = Lab(tmp_path_factory.mktemp("lb"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def lb(lab: Lab) -> Iterator[NetlinkLoadBalancer]:
    adapter = NetlinkLoadBalancer()
    yield adapter
    adapter.clear(lab.client)


def in_turn(names: list[str | None], expected: set[str]) -> bool:
    """Round robin: each window of len(expected) answers holds every expected name once."""
    n = len(expected)
    return all(set(names[i : i + n]) == expected for i in range(len(names) - n + 1))


# -- traffic -------------------------------------------------------------------------


def test_unavailable_is_none_here() -> None:
    assert NetlinkLoadBalancer().unavailable() is None
    reason = NetlinkLoadBalancer(nft="nft-not-installed").unavailable()
    assert reason is not None and "nft-not-installed not found" in reason


def test_tcp_round_robin_on_any_port(lab: Lab, lb: NetlinkLoadBalancer) -> None:
    lb.program(lab.client, one_service({T1: 1, T2: 1, T3: 1}))
    names = [lab.tcp(PORTS[i % 2]) for i in range(6)]
    assert in_turn(names, {"t1", "t2", "t3"}), names


def test_udp_round_robin_on_any_port(lab: Lab, lb: NetlinkLoadBalancer) -> None:
    lb.program(lab.client, one_service({T1: 1, T2: 1, T3: 1}))
    names = [lab.udp(PORTS[i % 2]) for i in range(6)]
    assert in_turn(names, {"t1", "t2", "t3"}), names


def test_weight_zero_drains(lab: Lab, lb: NetlinkLoadBalancer) -> None:
    lb.program(lab.client, one_service({T1: 1, T2: 1, T3: 1}))
    lb.program(lab.client, one_service({T1: 1, T2: 0, T3: 1}))
    names = [lab.tcp(PORTS[0]) for _ in range(6)]
    assert in_turn(names, {"t1", "t3"}), names


def test_a_deleted_destination_gets_nothing(lab: Lab, lb: NetlinkLoadBalancer) -> None:
    lb.program(lab.client, one_service({T1: 1, T2: 1, T3: 1}))
    lb.program(lab.client, one_service({T1: 1, T2: 1}))
    names = [lab.tcp(PORTS[1]) for _ in range(6)] + [lab.udp(PORTS[0]) for _ in range(4)]
    assert in_turn(names[:6], {"t1", "t2"}) and in_turn(names[6:], {"t1", "t2"}), names


def test_hairpin_to_the_clients_own_address(lab: Lab, lb: NetlinkLoadBalancer) -> None:
    lb.program(lab.client, one_service({CLIENT[1]: 1, T1: 1}))
    names = [lab.tcp(PORTS[i % 2]) for i in range(20)]
    assert names.count("client") == 10 and names.count("t1") == 10, names


def test_ping_to_the_vip_is_answered(lab: Lab, lb: NetlinkLoadBalancer) -> None:
    def ping() -> bool:
        return nsrun(lab.client, "ping", "-n", "-c", "1", "-W", "1", str(VIP)).returncode == 0

    assert not ping(), "nobody holds the VIP: only our DNAT may answer"
    lb.program(lab.client, one_service({T1: 1}))
    assert ping()
    lb.clear(lab.client)
    assert not ping()


# -- what is programmed, next to what is not ours --------------------------------------


def snapshot(path: Path) -> tuple[str, str, list[tuple[object, ...]], list[tuple[object, ...]]]:
    with ipr_in(path) as ipr:
        rules = sorted(
            (m.get("priority"), m.get("fwmark"), m.get("fwmask"), m.get("table"))
            for m in ipr.rule("dump", family=socket.AF_INET)
            if m.get("table") == ROUTE_TABLE
        )
        routes = sorted(
            (m.get("table"), m["type"], m.get("dst"), m["dst_len"], m.get("oif"))
            for m in ipr.route("dump", family=socket.AF_INET, table=ROUTE_TABLE)
            if m.get("table") == ROUTE_TABLE
        )
    ipvs = nsrun(path, "ipvsadm", "-Ln").stdout
    nft = nsrun(path, "nft", "list", "ruleset").stdout
    return ipvs, nft, rules, routes


FOREIGN_MARK = 5


def test_reconcile_from_a_second_instance(tmp_path: Path) -> None:
    sandbox = new_sandbox(tmp_path / "sb")
    try:
        # Someone else's service and table, and leftovers of ours from an older state.
        for argv in (
            ["ipvsadm", "-A", "-f", str(FOREIGN_MARK), "-s", "rr"],
            ["ipvsadm", "-A", "-f", str(mark(7)), "-s", "wlc"],
            ["ipvsadm", "-a", "-f", str(mark(7)), "-r", "10.99.0.50:0", "-m"],
            ["nft", "add", "table", "ip", "other"],
        ):
            assert nsrun(sandbox, *argv).returncode == 0, argv
        with ipr_in(sandbox) as ipr:
            ipr.rule("add", family=socket.AF_INET, table=ROUTE_TABLE, priority=100)
            ipr.route("add", dst="10.98.0.0/16", table=ROUTE_TABLE, oif=1)

        wanted = sandbox_state(
            [
                virtual_service(VIP, mark(1), {T1: 1, T2: 2}),
                virtual_service(ipaddress.IPv4Address("10.99.0.101"), mark(2), {T3: 1}),
            ]
        )
        NetlinkLoadBalancer().program(sandbox, wanted)
        first = snapshot(sandbox)
        ipvs, nft, rules, routes = first
        assert f"FWM  {FOREIGN_MARK} rr" in ipvs
        assert str(mark(7)) not in ipvs and "10.99.0.50" not in ipvs
        assert ipvs.count("Masq") == 3 and f"FWM  {mark(1)} rr" in ipvs
        assert "table ip other" in nft and nft.count("table ip swarmnet") == 1
        assert rules == [(RULE_PRIORITY, 0x736E0000, 0xFFFF0000, ROUTE_TABLE)]
        assert routes == [(ROUTE_TABLE, 2, None, 0, 1)]  # local default dev lo

        # A fresh instance (a restarted plugin), same state: nothing changes.
        NetlinkLoadBalancer().program(sandbox, wanted)
        assert snapshot(sandbox) == first
        # Changed state: converges.
        changed = one_service({T2: 0, T3: 4})
        NetlinkLoadBalancer().program(sandbox, changed)
        assert NetlinkLoadBalancer().read(sandbox) == changed
        assert snapshot(sandbox)[0].count("Masq") == 2

        NetlinkLoadBalancer().clear(sandbox)
        ipvs, nft, rules, routes = snapshot(sandbox)
        assert f"FWM  {FOREIGN_MARK} rr" in ipvs and "Masq" not in ipvs
        assert str(mark(1)) not in ipvs
        assert "swarmnet" not in nft and "table ip other" in nft
        assert rules == [] and routes == []
    finally:
        nsfs.remove(sandbox)


def test_sysctls_are_docker_s(tmp_path: Path) -> None:
    sandbox = new_sandbox(tmp_path / "sb")
    try:
        NetlinkLoadBalancer().program(sandbox, one_service({T1: 1}))
        values = nsfs.run_in(
            sandbox,
            lambda: {
                key: Path("/proc/sys", *key.split(".")).read_text().strip()
                for key, _ in lb_module.SYSCTLS
            },
        )
        assert values == dict(lb_module.SYSCTLS)
    finally:
        nsfs.remove(sandbox)


def test_a_sysctl_that_cannot_be_set_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = new_sandbox(tmp_path / "sb")
    try:
        monkeypatch.setattr(lb_module, "SYSCTLS", (("net.ipv4.vs.no_such_knob", "1"),))
        with pytest.raises(LoadBalancerError, match=r"net\.ipv4\.vs\.no_such_knob=1"):
            NetlinkLoadBalancer().program(sandbox, one_service({T1: 1}))
        assert NetlinkLoadBalancer().read(sandbox) == ()  # refused before any change
        NetlinkLoadBalancer(require_sysctls=False).program(sandbox, one_service({T1: 1}))
        assert NetlinkLoadBalancer().read(sandbox) == one_service({T1: 1})
    finally:
        nsfs.remove(sandbox)


def test_no_reference_to_the_namespace_is_left(tmp_path: Path) -> None:
    """After program/read/clear the namespace dies with its bind mount.

    Observed through a veth: when the sandbox's namespace is destroyed, the kernel
    deletes its end and with it the peer left in the watcher namespace.
    """
    watcher = new_sandbox(tmp_path / "watcher")
    sandbox = new_sandbox(tmp_path / "sb")
    try:
        fd = nsfs.open_fd(sandbox)
        try:
            with ipr_in(watcher) as ipr:
                ipr.link("add", ifname="w0", kind="veth", peer="w1")
                ipr.link("set", index=link(ipr, "w1")["index"], net_ns_fd=fd)
        finally:
            os.close(fd)
        fds = sorted(os.listdir("/proc/self/fd"))
        lb = NetlinkLoadBalancer()
        lb.program(sandbox, one_service({T1: 1}))
        lb.read(sandbox)
        lb.program(sandbox, one_service({T1: 1, T2: 1}))
        assert sorted(os.listdir("/proc/self/fd")) == fds
        nsfs.remove(sandbox)
        deadline = time.monotonic() + 30  # namespace teardown runs in a kernel workqueue
        while True:
            with ipr_in(watcher) as ipr:
                if not ipr.link_lookup(ifname="w0"):
                    break
            assert time.monotonic() < deadline, "the sandbox's namespace is still alive"
            time.sleep(0.1)
    finally:
        nsfs.remove(sandbox)
        nsfs.remove(watcher)


# -- the contract ------------------------------------------------------------------------


class TestNetlinkLoadBalancer(LoadBalancerContract):
    @pytest.fixture
    def lb(self) -> Iterator[LoadBalancer]:
        yield NetlinkLoadBalancer()

    @pytest.fixture
    def peer(self) -> Iterator[LoadBalancer]:
        yield NetlinkLoadBalancer()

    @pytest.fixture
    def sandbox(self, tmp_path: Path) -> Iterator[Path]:
        path = new_sandbox(tmp_path / "sandbox")
        try:
            yield path
        finally:
            nsfs.remove(path)

    @pytest.fixture
    def gone(self, tmp_path: Path) -> Iterator[Path]:
        yield tmp_path / "missing"
