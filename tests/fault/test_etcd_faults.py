"""etcd faults on a real etcd (loopback): a txn that times out after it was applied,
and a TLS handshake that fails."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import suppress

import pytest

from plugin.store.etcd import EtcdKV, StoreUnavailable
from testbed.etcdserver import EtcdServer, etcd_server


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


class LosesTxnReplies:
    """A TCP proxy to etcd that passes every request on, but once a connection has
    carried a txn it never answers on it again: the txn is applied, the client
    only sees a timeout."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.5)
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.target)
            swallow = threading.Event()
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pipe, args=(src, dst, up, swallow), daemon=True)
                t.start()
                self.threads.append(t)

    def _pipe(
        self, src: socket.socket, dst: socket.socket, up: bool, swallow: threading.Event
    ) -> None:
        src.settimeout(0.5)
        with suppress(OSError):
            while not self.stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if up and b"/kv/txn" in data:
                    swallow.set()
                if up or not swallow.is_set():
                    dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        self.server.close()


def test_a_txn_that_timed_out_is_never_sent_again(etcd: EtcdServer) -> None:
    direct = EtcdKV([etcd.url])
    direct.put("/fault/counter", b"0")
    proxy = LosesTxnReplies(etcd.client_port)
    try:
        # The proxy first, then etcd itself: the failover that used to re-send.
        kv = EtcdKV([f"http://127.0.0.1:{proxy.port}", etcd.url], timeout=1.0)
        runs: list[bytes | None] = []

        def allocate(current: bytes | None) -> bytes:
            runs.append(current)
            return str(int(current or b"0") + 1).encode()

        with pytest.raises(StoreUnavailable, match="not sent again"):
            kv.update("/fault/counter", allocate)
        # Applied once through the proxy; never again on the second endpoint, and
        # ``allocate`` never ran on its own write.
        assert direct.get("/fault/counter") == b"1"
        assert runs == [b"0"]
        # The next update reads afresh and goes on from there.
        kv2 = EtcdKV([etcd.url])
        assert kv2.update("/fault/counter", allocate) == b"2"
    finally:
        proxy.close()


def test_a_read_that_timed_out_fails_over(etcd: EtcdServer) -> None:
    EtcdKV([etcd.url]).put("/fault/read", b"x")
    dead = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        kv = EtcdKV([f"http://127.0.0.1:{dead.getsockname()[1]}", etcd.url], timeout=1.0)
        assert kv.get("/fault/read") == b"x"
    finally:
        dead.close()


def test_a_failed_tls_handshake_is_named(etcd: EtcdServer) -> None:
    # etcd here speaks plain HTTP: the handshake fails.
    kv = EtcdKV([f"https://127.0.0.1:{etcd.client_port}"], timeout=2.0)
    with pytest.raises(StoreUnavailable) as err:
        kv.get("/fault/x")
    assert "TLS handshake" in str(err.value) and "unreachable" not in str(err.value)
