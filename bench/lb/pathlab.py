"""Part 1's bed: a switch namespace with a bridge, a client and three one-byte TCP servers."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.lb.scratch import Scratch
from driver.kernel import nsfs
from testbed.netns import ipr_in, link, plug

IP = ipaddress.IPv4Address
PREFIX = 24
CLIENT_IP = IP("10.99.0.10")
BACKEND_IPS = (IP("10.99.0.11"), IP("10.99.0.12"), IP("10.99.0.13"))
DIRECT_IP = IP("10.99.0.20")  # the client's second address, the source of direct connections
PORT = 8080
ASK_TIMEOUT = 10.0  # seconds; bounds one connection (a SYN lost twice still answers at 3 s)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass
class Conn:
    target: str
    us: float | None = None  # connect + first byte; None: failed
    tag: str = ""  # which backend answered
    sport: int = 0
    error: str = ""
    failed_after_us: float | None = None


class OneByteServer:
    """Accepts TCP on PORT in ``ns``; sends ``tag`` (one byte) and closes each connection."""

    def __init__(self, ns: Path, tag: bytes) -> None:
        self.tag = tag
        self.stop = threading.Event()
        self.sock = nsfs.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", PORT))
        self.sock.listen(256)
        self.sock.settimeout(0.2)  # bounds the loop: it sees ``stop`` within 0.2 s
        self.thread = threading.Thread(target=self._serve, name="lb-bench-server", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.tag)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


class PathLab:
    """A switch namespace with a bridge; a client and three backends on it."""

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch
        self.servers: list[OneByteServer] = []
        self.switch = scratch.netns("switch")
        with ipr_in(self.switch) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.link("set", index=link(ipr, "br0")["index"], state="up")
        self.client = self._node("client", CLIENT_IP)
        with ipr_in(self.client) as ipr:
            index = link(ipr, "eth0")["index"]
            ipr.addr("add", index=index, address=str(DIRECT_IP), prefixlen=PREFIX)
        try:
            for n, addr in enumerate(BACKEND_IPS, start=1):
                ns = self._node(f"t{n}", addr)
                self.servers.append(OneByteServer(ns, str(n).encode()))
        except BaseException:
            self.close()
            raise

    def _node(self, name: str, addr: IP) -> Path:
        path = self.scratch.netns(name)
        plug(self.switch, "br0", path, f"s-{name}", str(addr), PREFIX)
        return path

    def connect_batch(self, targets: Sequence[IP], source: IP) -> list[Conn]:
        """One connection per target, from ``source`` (an address of the client): connect
        plus the first byte, timed. The sockets are made in a thread inside the client's
        namespace, so the timing holds no namespace switch. The source port is left to
        connect(), as for an unbound socket (IP_BIND_ADDRESS_NO_PORT)."""

        def body() -> list[Conn]:
            out = []
            for target in targets:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(ASK_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                conn = Conn(str(target))
                try:
                    sock.bind((str(source), 0))
                    start = time.perf_counter_ns()
                    try:
                        sock.connect((str(target), PORT))
                        got = sock.recv(1)
                        conn.us = (time.perf_counter_ns() - start) / 1000
                        conn.tag = got.decode() if len(got) == 1 else ""
                        if not conn.tag:
                            conn.error = "closed without a byte"
                    except OSError as exc:
                        conn.error = f"{type(exc).__name__}: {exc}"
                        conn.failed_after_us = (time.perf_counter_ns() - start) / 1000
                    with contextlib.suppress(OSError):
                        conn.sport = sock.getsockname()[1]
                finally:
                    sock.close()
                out.append(conn)
            return out

        return nsfs.run_in(self.client, body)

    def close(self) -> None:
        for server in self.servers:
            server.close()
