"""A real watch relay (``swarmnet relay``) in its own process, in front of a test etcd: for
tests/integration and bench/scale_sim. With ``tls``, it serves HTTPS and asks nodes for a
client certificate (``openssl`` makes the test PKI)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.etcdserver import free_port, wait_healthy
from testbed.proc import stop as stop_process


@dataclass(frozen=True)
class TestPKI:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in ``dir``."""

    dir: Path

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.pem")

    def cert(self, name: str) -> str:
        return str(self.dir / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.dir / f"{name}-key.pem")


def make_pki(dir: Path) -> TestPKI:
    pki = TestPKI(dir)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=dir)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca-key.pem", "-out", "ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")
        (dir / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return pki


@dataclass
class RelayServer:
    url: str
    port: int
    etcd_url: str
    log: Path
    process: subprocess.Popen[bytes]
    pki: TestPKI | None = None

    def stop(self) -> None:
        stop_process(self.process)

    def start(self) -> None:
        """Start again on the same port (after stop(), for failover tests)."""
        self.process = _spawn(self.etcd_url, self.port, self.log, self.pki)
        _wait_healthy(self)


def _spawn(etcd_url: str, port: int, log: Path, pki: TestPKI | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ETCD_ENDPOINTS": etcd_url, "LOG_LEVEL": "info"}
    tls = [] if pki is None else ["--cert", pki.cert("server"), "--key", pki.key("server"),
                                  "--client-ca", pki.ca]
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "plugin.cli", "relay", "--listen", f"127.0.0.1:{port}", *tls],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parent.parent,
    )


def _wait_healthy(relay: RelayServer) -> None:
    ctx = None
    if relay.pki is not None:
        ctx = ssl.create_default_context(cafile=relay.pki.ca)
        ctx.load_cert_chain(relay.pki.cert("client"), relay.pki.key("client"))
    wait_healthy(relay.url, relay.process, "the relay", ctx)


@contextmanager
def relay_server(
    etcd_url: str, log_dir: Path | None = None, pki: TestPKI | None = None
) -> Iterator[RelayServer]:
    """A relay on a free loopback port, healthy (it has listed etcd) when yielded; stopped on
    the way out, even on failure."""
    log = Path(tempfile.mkstemp(prefix="swarmnet-relay-", suffix=".log", dir=log_dir)[1])
    port = free_port()
    scheme = "http" if pki is None else "https"
    relay = RelayServer(f"{scheme}://127.0.0.1:{port}", port, etcd_url, log,
                        _spawn(etcd_url, port, log, pki), pki)
    try:
        _wait_healthy(relay)
        yield relay
    finally:
        relay.stop()
        if log_dir is None:
            log.unlink(missing_ok=True)
