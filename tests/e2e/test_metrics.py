"""Issue 15: a real Prometheus scrapes the managed plugin's /metrics, and PromQL over its
HTTP API sees containers join and leave.

One standalone dockerd (SCOPE=local) with the plugin installed with METRICS_ADDR on
loopback. The plugin runs in the host's network namespace, which here is the dockerd's
namespace; Prometheus (Debian's package, /usr/bin/prometheus) runs in that namespace too,
listens on its loopback only and keeps its store in a temporary directory. It is stopped
at the end of the module, before the dockerd is torn down.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import proc
from tests.e2e.conftest import install, teardown
from tests.e2e.dockerhost import NETNS_DIR, PLUGIN_NAME, DockerHost, HostError, wait_for
from tests.e2e.workload import assert_all_ping, create_network, run_box

pytestmark = pytest.mark.e2e

PROMETHEUS = "/usr/bin/prometheus"
METRICS_ADDR = "127.0.0.1:9474"
PROMETHEUS_ADDR = "127.0.0.1:9090"  # in the dockerd's namespace: nobody else's port
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: swarmnet
    static_configs:
      - targets: ["{target}"]
"""


class Prometheus:
    def __init__(self, host: DockerHost, workdir: Path) -> None:
        self.host = host
        self.workdir = workdir
        self.log = workdir / "prometheus.log"
        (workdir / "prometheus.yml").write_text(CONFIG.format(target=METRICS_ADDR))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "nsenter", f"--net={NETNS_DIR / self.host.netns}", "--",
                    PROMETHEUS,
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={PROMETHEUS_ADDR}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for("Prometheus to answer", self.ready, 60, interval=0.5)

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        out = self.host.in_netns(
            "curl", "-sf", "--max-time", "2", f"http://{PROMETHEUS_ADDR}/-/ready", check=False
        )
        return out.returncode == 0

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query over the HTTP API; the result vector."""
        out = self.host.in_netns(
            "curl", "-sf", "--max-time", "5", "-G",
            f"http://{PROMETHEUS_ADDR}/api/v1/query", "--data-urlencode", f"query={promql}",
        )
        reply = json.loads(out.stdout)
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        out = self.host.in_netns(
            "curl", "-sf", "--max-time", "20", "-G",
            f"http://{PROMETHEUS_ADDR}/api/v1/query_range", "--data-urlencode", f"query={promql}",
            "--data-urlencode", f"start={start}", "--data-urlencode", f"end={end}",
            "--data-urlencode", f"step={step}",
        )
        reply = json.loads(out.stdout)
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single sample's value, or None when the query returns no series."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc is not None:
            proc.stop(self.proc, grace=30)


@pytest.fixture(scope="module")
def metrics_host(host_factory: Callable[..., DockerHost]) -> Iterator[DockerHost]:
    host = host_factory("metrics")
    try:
        install(host, SCOPE="local", METRICS_ADDR=METRICS_ADDR)
        yield host
    finally:
        teardown(host)


@pytest.fixture(scope="module")
def prometheus(
    metrics_host: DockerHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    if not Path(PROMETHEUS).is_file():
        pytest.fail(f"{PROMETHEUS} is missing: scripts/deps.sh installs Debian's prometheus")
    prom = Prometheus(metrics_host, tmp_path_factory.mktemp("prometheus"))
    try:
        prom.start()
        yield prom
    finally:
        prom.stop()


def eventually(prom: Prometheus, promql: str, want: float, timeout: float = 30) -> None:
    def matches() -> bool:
        return prom.value(promql) == want

    try:
        wait_for(f"{promql} == {want}", matches, timeout, interval=0.5)
    except HostError as e:
        raise AssertionError(f"{e}; last value: {prom.value(promql)}") from None


def test_prometheus_sees_containers_join_and_leave(
    metrics_host: DockerHost, prometheus: Prometheus
) -> None:
    h, prom = metrics_host, prometheus
    started = time.time()
    eventually(prom, 'up{job="swarmnet"}', 1)
    # The plugin port is on the dockerd's loopback only: its namespace has no other address
    # that reaches it (METRICS_ADDR is 127.0.0.1).
    net = create_network(h, "pm1", "--ipam-driver", PLUGIN_NAME, "--subnet", "10.234.1.0/24")
    boxes = [run_box(h, f"pm{c}", "pm1") for c in "ab"]
    assert_all_ping(h, boxes)
    eventually(prom, f'swarmnet_endpoints_joined{{network="{net}"}}', 2)
    eventually(prom, f'swarmnet_endpoints{{network="{net}"}}', 2)
    eventually(prom, "swarmnet_networks", 1)
    # Gateway and two containers, from the plugin's own IPAM.
    eventually(
        prom, 'swarmnet_ipam_addresses_allocated{space="local",pool="10.234.1.0/24"}', 3
    )
    eventually(prom, 'swarmnet_ipam_addresses_free{space="local",pool="10.234.1.0/24"}', 251)
    joins = (
        'swarmnet_protocol_call_duration_seconds_count{method="NetworkDriver.Join",outcome="ok"}'
    )
    eventually(prom, joins, 2)
    # A latency quantile works on the histogram's buckets.
    p99 = prom.value(
        "histogram_quantile(0.99, sum by (le) (swarmnet_protocol_call_duration_seconds_bucket"
        '{method="NetworkDriver.Join"}))'
    )
    assert p99 is not None and 0 < p99 <= 10

    h.docker("rm", "-f", boxes[0].name, timeout=120)
    eventually(prom, f'swarmnet_endpoints_joined{{network="{net}"}}', 1)
    eventually(prom, f'swarmnet_endpoints{{network="{net}"}}', 1)
    eventually(
        prom, 'swarmnet_protocol_call_duration_seconds_count{method="NetworkDriver.Leave",'
        'outcome="ok"}', 1,
    )
    eventually(
        prom, 'swarmnet_ipam_addresses_allocated{space="local",pool="10.234.1.0/24"}', 2
    )
    # No series carries an endpoint ID: the label sets of every swarmnet_ series.
    series = prom.query('{__name__=~"swarmnet_.+"}')
    labels = {k for s in series for k in s["metric"]}
    assert labels <= {
        "__name__", "instance", "job", "network", "vni", "encrypted", "internal", "space",
        "pool", "method", "outcome", "table", "op", "kind", "trigger", "what", "part",
        "state", "version", "le",
    }, labels
    for s in series:
        for value in s["metric"].values():
            assert boxes[0].container_id[:12] not in value and boxes[0].ip not in value
    # The process collector: the worker's memory and file descriptors.
    rss = prom.value('process_resident_memory_bytes{job="swarmnet"}')
    assert rss is not None and 5e6 < rss < 1e9
    fds = prom.value('process_open_fds{job="swarmnet"}')
    assert fds is not None and fds > 3

    picture = os.environ.get("SWARMNET_DASHBOARD_PNG")
    if picture:
        render_dashboard(h, prom, Path(picture), started)

    h.docker("rm", "-f", boxes[1].name, timeout=120)
    h.docker("network", "rm", "pm1", timeout=60)
    eventually(prom, "swarmnet_networks", 0)
    # The network's series went with it (Prometheus marks them stale at the next scrape).
    wait_for(
        "the deleted network's series to go",
        lambda: not prom.query(f'swarmnet_endpoints{{network="{net}"}}'),
        30,
        interval=0.5,
    )


def render_dashboard(h: DockerHost, prom: Prometheus, out: Path, started: float) -> None:
    """docs/grafana-dashboard.png: a few minutes of containers coming and going on two
    networks, then every dashboard panel drawn from this Prometheus (bench/dashboard.py)."""
    from bench.dashboard import render

    create_network(h, "pm2", "--ipam-driver", PLUGIN_NAME, "--subnet", "10.234.2.0/24")
    until = time.monotonic() + 240
    n = 0
    while time.monotonic() < until:
        name = f"pc{n % 6}"
        h.docker("rm", "-f", name, check=False, timeout=120)
        run_box(h, name, "pm2" if n % 2 else "pm1")
        n += 1
        time.sleep(3)
    for k in range(6):
        h.docker("rm", "-f", f"pc{k}", check=False, timeout=120)
    h.docker("network", "rm", "pm2", timeout=60)
    time.sleep(20)
    drawn = render(prom.query_range, out, started, time.time(), 2.0)
    assert drawn >= 8, f"only {drawn} panels had data"
