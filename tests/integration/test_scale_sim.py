"""The scale simulator's harness tells the truth (issue 16): its simulated nodes, the real
driver service and etcd control plane on fake kernels, learn a join on every other node
and drop a killed node's endpoints; and a tiny run of the bench measures what it claims."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.scale_sim.run import main as scale_sim
from testbed.etcdserver import EtcdServer
from testbed.scalesim.node import SimNode, endpoint_id, tracked_ip

TTL = 3


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def nodes(etcd: EtcdServer) -> Iterator[list[SimNode]]:
    made = [SimNode(i, etcd.url, TTL, networks=2) for i in range(4)]
    for n in made:
        n.control.start_watching()
    yield made
    for n in made:
        if n.alive:
            n.kill()


def test_a_join_reaches_every_other_node_and_a_killed_node_leaves(nodes: list[SimNode]) -> None:
    ip = tracked_ip(1, 0)
    at = nodes[0].join(1, endpoint_id(0, 0), ip)
    others = nodes[1:]
    wait_for(lambda: all(n.kernel.holds(ip) for n in others), 10, "the join on every node")
    assert all(n.kernel.added_at[ip] >= at for n in others)
    assert not nodes[0].kernel.holds(ip)  # its own endpoint is no peer of its own

    lost = ipaddress.ip_address("10.0.200.1")
    nodes[3].join(0, endpoint_id(3, 0), lost)
    wait_for(lambda: all(n.kernel.holds(lost) for n in nodes[:3]), 10, "the second join")
    nodes[3].kill()
    wait_for(lambda: not any(n.kernel.holds(lost) for n in nodes[:3]), TTL + 10,
             "the killed node's endpoint to leave")
    assert all(n.kernel.holds(ip) for n in nodes[1:3])  # the live node's endpoint stays


@pytest.mark.parametrize("relays", [0, 2])
def test_a_tiny_bench_run_measures_joins_churn_and_loss(tmp_path: Path, relays: int) -> None:
    """With ``--relays``, the nodes follow the peers through relays: etcd serves one watch per
    relay instead of one per node, and the relays' CPU is measured."""
    out = tmp_path / "scale_sim.json"
    scale_sim(["--sizes", "4", "--ttl", str(TTL), "--probes", "3", "--idle-seconds", "1",
               "--churn-rate", "10", "--churn-seconds", "2", "--settle", "20", "--budget", "60",
               "--relays", str(relays), "--out", str(out), "--no-png"])
    size = json.loads(out.read_text())["sizes"][0]
    assert "aborted" not in size, size
    assert size["bootstrap"]["converged"]
    assert size["probes"]["n"] == 3 and size["probes"]["everywhere"]
    assert size["churn"]["n"] >= 15 and size["churn"]["everywhere"]
    assert size["idle"]["keepalive_requests_per_s"] > 0
    loss = size["loss"]
    assert loss["killed"] == 1 and loss["all_gone"] and loss["entries"] > 0
    assert loss["removed_everywhere_s"] < TTL + 10
    assert size["idle"]["etcd_watchers"] == (relays or 4)
    assert (size["churn"]["usage"]["relay_cores"] > 0) == bool(relays)
    gc_windows = (size["bootstrap"]["usage"], size["probes"]["usage"], size["churn"]["gc"],
                  loss["usage"])
    for phase in gc_windows:
        assert phase["gc_s"] >= phase["gc_gen2_s"] >= phase["gc_gen2_max_s"] >= 0


def test_an_etcd_only_run_churns_without_watching(tmp_path: Path) -> None:
    """--etcd-only: the nodes write and keep their leases, the relays watch, nobody follows."""
    out = tmp_path / "scale_sim.json"
    scale_sim(["--sizes", "4", "--ttl", str(TTL), "--idle-seconds", "1", "--churn-rate", "10",
               "--churn-seconds", "2", "--budget", "60", "--relays", "1", "--etcd-only",
               "--out", str(out), "--no-png"])
    size = json.loads(out.read_text())["sizes"][0]
    assert "aborted" not in size, size
    assert size["bootstrap"]["watching"] is False
    churn = size["churn"]
    assert churn["joins_per_s"] > 5 and churn["n"] == 0
    assert churn["usage"]["etcd_watchers"] == 1 and churn["usage"]["node_events"] == 0
    assert "probes" not in size and "loss" not in size
