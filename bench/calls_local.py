"""Plugin calls on one quiet host: `swarmnet serve` (gunicorn, netlink kernel, SQLite store) in
a scratch network namespace, driven with CreateEndpoint + Join + Leave + DeleteEndpoint cycles,
1 and 16 at a time, as bench/plugin_calls.py drives node 1 of the lab; plus the worker's CPU
per call (from /proc), which says whether the server is CPU-bound.

No dockerd, no etcd and no other node share the two cores here, so this is the plugin's own
ceiling; the lab figures (``python -m bench.run --only calls``) are what it gets next to three
dockerds. Needs root.

    python -m bench.calls_local                      # 4 rounds of c=1 x 200 and c=16 x 12 cycles
    python -m bench.calls_local --rounds 2 --c1-cycles 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import stats
from bench.plugin_calls import CALLS, run_level
from testbed import proc
from testbed.serve import Server, call, scratch_server

NET = "b" * 25
def level(srv: Server, concurrency: int, cycles: int) -> dict[str, float]:
    addresses = [f"10.31.0.{100 + i}/24" for i in range(concurrency)]
    worker = srv.worker()
    before = proc.cpu_seconds(worker)
    latencies, wall = run_level(srv.socket, NET, addresses, concurrency, cycles)
    used = proc.cpu_seconds(worker) - before
    every = [v for m in CALLS for v in latencies[m]]
    s = stats(every)
    return {"concurrency": concurrency, "calls": len(every), "calls_per_s": len(every) / wall,
            "p50_ms": s["median"], "p99_ms": s["p99"], "cpu_ms_per_call": used / len(every) * 1000,
            "worker_cpu_share": used / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--c1-cycles", type=int, default=200)
    p.add_argument("--c16-cycles", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path("build/bench/calls_local.json"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="calls-local-") as tmp, \
            scratch_server(Path(tmp)) as srv:
        srv.start(LOG_LEVEL="warning")
        vni = call(srv.socket, "/NetworkDriver.AllocateNetwork",
                   {"NetworkID": NET, "Options": {}})[1]["Options"]["swarmnet.vni"]
        status, reply = call(srv.socket, "/NetworkDriver.CreateNetwork", {
            "NetworkID": NET, "Options": {"com.docker.network.generic": {"swarmnet.vni": vni}},
            "IPv4Data": [{"Pool": "10.31.0.0/24", "Gateway": "10.31.0.1/24"}]})
        if status != 200:
            raise SystemExit(f"CreateNetwork: {status} {reply}")
        run_level(srv.socket, NET, ["10.31.0.99/24"], 1, 5)  # warm-up
        for r in range(args.rounds):
            for conc, cycles in ((1, args.c1_cycles), (16, args.c16_cycles)):
                row = {"round": r + 1, **level(srv, conc, cycles)}
                rows.append(row)
                print(f"round {r + 1} c={conc:<2} {row['calls_per_s']:6.0f} calls/s  "
                      f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                      f"worker CPU {row['cpu_ms_per_call']:.2f} ms/call "
                      f"({row['worker_cpu_share'] * 100:.0f}% of a core)", flush=True)
        call(srv.socket, "/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    for conc in (1, 16):
        mine = [r for r in rows if r["concurrency"] == conc]
        print(f"c={conc}: calls/s {min(r['calls_per_s'] for r in mine):.0f}-"
              f"{max(r['calls_per_s'] for r in mine):.0f}, p99 "
              f"{min(r['p99_ms'] for r in mine):.1f}-{max(r['p99_ms'] for r in mine):.1f} ms, "
              f"CPU {min(r['cpu_ms_per_call'] for r in mine):.2f}-"
              f"{max(r['cpu_ms_per_call'] for r in mine):.2f} ms/call")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
