"""Throughput of an encrypted network against a plain one, between two hosts, in one run.

Needs a kernel with ESP, so it runs inside kernel-lab:

    /work/shared/kernel-lab/run --timeout 900 -- \\
        /root/.pyenv/versions/3.11.7/bin/python bench/ipsec_bench.py --seconds 5 --runs 2

Two hosts are namespaces on one underlay bridge, each running the driver
service with the netlink kernel and real xfrm (testbed/hostlab.py).
Each has a container on an encrypted network (ESP, UDP 4790) and one on a plain
network (UDP 4789). iperf3 (TCP, one stream) runs container to container; runs
alternate plain, encrypted, plain, ... so load on the machine hits both alike.
Prints a table and the ratio encrypted/plain of the medians; writes JSON
(default build/bench/ipsec.json).

Under kernel-lab's emulated CPU the absolute numbers are tiny and mean nothing;
the ratio is what this measures: the cost of ESP (AES-GCM in software here) on
the same path.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from driver.config import EncryptionConfig  # noqa: E402
from testbed.hostlab import Endpoint, HostLab  # noqa: E402

ENC, PLAIN = "b1b1b1b1b1b1b1b1b1b1b1b1b", "b2b2b2b2b2b2b2b2b2b2b2b2b"


def iperf(client: Endpoint, server: Endpoint, seconds: int) -> float:
    """Bits per second received, one TCP stream client -> server."""
    srv = subprocess.Popen(
        ["nsenter", f"--net={server.container}", "iperf3", "-s", "-1", "-B",
         str(server.address.ip)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):  # the server needs a moment to listen, more so when emulated
            time.sleep(0.2)
            done = subprocess.run(
                ["nsenter", f"--net={client.container}", "iperf3", "-c", str(server.address.ip),
                 "-t", str(seconds), "-J"],
                capture_output=True, text=True, timeout=seconds * 10 + 120,
            )  # fmt: skip
            if done.returncode == 0:
                result = json.loads(done.stdout)
                return float(result["end"]["sum_received"]["bits_per_second"])
            if "Connection refused" not in done.stdout + done.stderr:
                raise RuntimeError(f"iperf3 failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        raise RuntimeError("the iperf3 server never listened")
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(timeout=30)


def aead_driver() -> str:
    """Which implementation of rfc4106(gcm(aes)) the kernel instantiated (e.g. aesni or generic)."""
    try:
        blocks = Path("/proc/crypto").read_text().split("\n\n")
    except OSError:
        return "unknown"
    for block in blocks:
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        if fields.get("name") == "rfc4106(gcm(aes))":
            return fields.get("driver", "unknown")
    return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 run")
    parser.add_argument("--runs", type=int, default=2, help="runs per network")
    parser.add_argument("--json", type=Path, default=ROOT / "build" / "bench" / "ipsec.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ipsec-bench-") as tmp:
        lab = HostLab(Path(tmp), 2, EncryptionConfig(poll_interval=0))
        try:
            a, b = lab.hosts
            eps: dict[str, list[Endpoint]] = {}
            for net, vni, subnet, encrypted in (
                (ENC, 300, "10.40.0", True),
                (PLAIN, 301, "10.41.0", False),
            ):
                for i, host in enumerate((a, b), start=1):
                    host.create_network(net, vni, f"{subnet}.0/24", encrypted=encrypted)
                    ep_id = f"{net[:2]}{i}".ljust(64, "0")
                    eps.setdefault(net, []).append(host.join(net, ep_id, f"{subnet}.{10 + i}/24"))
            lab.hub.deliver()
            sas = len(a.xfrm()[0])
            if sas != 2:
                raise RuntimeError(f"expected 2 SAs on host 1, found {sas}")
            driver = aead_driver()
            print(f"kernel {platform.release()}, AEAD implementation: {driver}", flush=True)
            results: dict[str, list[float]] = {"plain": [], "encrypted": []}
            for run in range(args.runs):
                for name, net in (("plain", PLAIN), ("encrypted", ENC)):
                    bps = iperf(eps[net][0], eps[net][1], args.seconds)
                    results[name].append(bps)
                    print(f"run {run + 1} {name:9s} {bps / 1e6:9.2f} Mbit/s", flush=True)
        finally:
            lab.close()

    plain, encrypted = (statistics.median(results[k]) for k in ("plain", "encrypted"))
    ratio = encrypted / plain
    print()
    print(f"{'network':10s} {'median Mbit/s':>14s}  runs")
    for name in ("plain", "encrypted"):
        runs = ", ".join(f"{x / 1e6:.2f}" for x in results[name])
        print(f"{name:10s} {statistics.median(results[name]) / 1e6:14.2f}  {runs}")
    print(f"\nencrypted / plain throughput ratio: {ratio:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "seconds": args.seconds,
                "runs": args.runs,
                "bits_per_second": results,
                "ratio": ratio,
                "kernel": platform.release(),
                "aead_driver": driver,
                "host": platform.node(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
