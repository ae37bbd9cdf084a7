"""Issue 15: docs/alerts.yml is valid Prometheus rules (promtool check rules), every alert
fires on the series it is about and stays quiet on healthy ones (promtool test rules), and
it names only metrics the plugin exports (docs/metrics.md lists them)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tests.unit.test_metrics import build

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "docs" / "alerts.yml"
PROMTOOL = "/usr/bin/promtool"

TESTS = """\
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'swarmnet_etcd_reachable{{instance="a"}}'
        values: '1 1 0 0 0 0'
      - series: 'swarmnet_etcd_reachable{{instance="b"}}'
        values: '1 1 1 1 1 1'
      - series: 'swarmnet_network_broken{{instance="a",network="n1"}}'
        values: '0 1 1 1 1 1'
      - series: 'swarmnet_ipsec_failures_total{{instance="a",what="rotation"}}'
        values: '0 0 1 1 1 1'
      - series: 'swarmnet_ipsec_failures_total{{instance="a",what="sync"}}'
        values: '0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 5m
        alertname: SwarmnetEtcdUnreachable
        exp_alerts:
          - exp_labels: {{severity: critical, instance: a}}
            exp_annotations:
              summary: "swarmnet on a cannot reach etcd"
              description: "{etcd}"
      - eval_time: 5m
        alertname: SwarmnetNetworkBroken
        exp_alerts:
          - exp_labels: {{severity: critical, instance: a, network: n1}}
            exp_annotations:
              summary: "swarmnet on a: network n1 is broken"
              description: "{broken}"
      - eval_time: 5m
        alertname: SwarmnetKeyRotationFailed
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a, what: rotation}}
            exp_annotations:
              summary: "swarmnet on a: an IPsec key rotation failed"
              description: "{rotation}"
      - eval_time: 5m
        alertname: SwarmnetIpsecSyncFailing
        exp_alerts: []
  - interval: 15s
    input_series:
      # 2 s per record: slow; b, 20 ms: fine.
      - series: 'swarmnet_convergence_lag_seconds_bucket{{instance="a",le="1"}}'
        values: '0+0x80'
      - series: 'swarmnet_convergence_lag_seconds_bucket{{instance="a",le="2.5"}}'
        values: '0+0x20 0+10x60'
      - series: 'swarmnet_convergence_lag_seconds_bucket{{instance="a",le="+Inf"}}'
        values: '0+0x20 0+10x60'
      - series: 'swarmnet_convergence_lag_seconds_bucket{{instance="b",le="0.025"}}'
        values: '0+10x80'
      - series: 'swarmnet_convergence_lag_seconds_bucket{{instance="b",le="+Inf"}}'
        values: '0+10x80'
    alert_rule_test:
      - eval_time: 19m
        alertname: SwarmnetConvergenceSlow
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a}}
            exp_annotations:
              summary: "swarmnet on a: p99 convergence lag above 2 s"
              description: "{slow}"
"""


def yaml_descriptions() -> dict[str, str]:
    """Each alert's description as Prometheus reads it (a folded block: one line), with
    ``{{ $labels.x }}`` filled for instance a and network n1 and quotes escaped."""
    out: dict[str, str] = {}
    text = ALERTS.read_text()
    for m in re.finditer(
        r"- alert: (\w+)(?:(?!- alert:).)*?description: >-\n((?: {12}[^\n]*\n)+)", text, re.S
    ):
        folded = " ".join(line.strip() for line in m.group(2).splitlines())
        folded = folded.replace("{{ $labels.instance }}", "a")
        folded = folded.replace("{{ $labels.network }}", "n1")
        out[m.group(1)] = folded.replace("\\", "\\\\").replace('"', '\\"')
    return out


@pytest.fixture(scope="module", autouse=True)
def promtool() -> None:
    if shutil.which(PROMTOOL) is None:
        pytest.fail(f"{PROMTOOL} is missing: scripts/deps.sh installs Debian's prometheus")


def test_the_rules_check() -> None:
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout + done.stderr


def test_each_alert_fires_on_what_it_is_about(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    rules = yaml_descriptions()
    tests.write_text(
        TESTS.format(
            rules=ALERTS,
            etcd=rules["SwarmnetEtcdUnreachable"],
            broken=rules["SwarmnetNetworkBroken"],
            rotation=rules["SwarmnetKeyRotationFailed"],
            slow=rules["SwarmnetConvergenceSlow"].replace(
                "{{ $value | humanizeDuration }}", "2.485s"
            ),
        )
    )
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alerts_use_metrics_the_plugin_exports() -> None:
    _, metrics, _ = build()
    exported = {
        line.split()[2]
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith("# TYPE ")
    }
    # Metrics only present with etcd, or with a key ring.
    exported |= {"swarmnet_etcd_reachable", "swarmnet_ipsec_key_age_seconds"}
    used = set(re.findall(r"\b(swarmnet_[a-z_]+?)(?:_bucket|_count|_sum)?\b", ALERTS.read_text()))
    used = {u for u in used if not u.startswith("swarmnet_etcd_unreach")}
    missing = {u for u in used if u not in exported and u.removesuffix("_total") not in exported}
    assert not missing, missing
