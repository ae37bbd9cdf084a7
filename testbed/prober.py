"""An ICMP prober: from inside a container's network namespace, ping a set of addresses until
each answers, and say when each first did. The benchmarks measure convergence with it (one
target, every 2 ms) and scale (hundreds of targets, a round every 0.2 s).

The neighbour retransmit time of the namespace is lowered first (the kernel default is 1 s),
so that a miss before the driver has programmed a peer costs milliseconds: the driver is
measured, not the ARP timer. With ``quiet`` it first checks for that long that no target
answers yet (a stale answer ends the run with "stale").

``Prober`` starts ``python -m testbed.prober`` under nsenter; the module's ``main`` is what
runs in the namespace. It prints "ready" (or "stale") once, then one JSON line:
``{"first": {address: epoch of its first reply}, "missing": [addresses that never did]}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.proc import BedError, ns_inode

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = b"swarmnet-prober"


@dataclass(frozen=True)
class Probe:
    first: dict[str, float]  # address -> epoch of its first reply
    missing: list[str]

    @property
    def all(self) -> float | None:
        """When the last target first answered; None if one never did."""
        return max(self.first.values()) if self.first and not self.missing else None


class Prober:
    """The prober running in the network namespace of process ``pid`` (a container's)."""

    def __init__(
        self,
        pid: int,
        targets: Sequence[str],
        *,
        retrans_ms: int,
        deadline: float,
        interval: float,
        quiet: float = 0.0,
    ) -> None:
        argv = [
            "nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-m", "testbed.prober",
            "--retrans-ms", str(retrans_ms), "--deadline", repr(deadline),
            "--interval", repr(interval), "--quiet", repr(quiet), "--not-in", _netns_id(),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n".join(targets) + "\n")
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() would flush it

    def ready(self) -> bool:
        """After the quiet check: True to go on, False when a target answered already."""
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        if first == "ready":
            return True
        self.proc.wait()
        if first == "stale":
            return False
        raise BedError(f"prober failed: {first} {self._stderr()}")

    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, timeout: float) -> Probe:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        try:
            rep = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BedError(f"prober failed: {out[-300:]} {err[-500:]}") from None
        return Probe({k: float(v) for k, v in rep["first"].items()}, list(rep["missing"]))

    def _stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""


# --------------------------------------------------------------------------- in the namespace


def _netns_id() -> str:
    """This process's network namespace, as text."""
    return str(ns_inode("/proc/self/ns/net"))


def _checksum(b: bytes) -> int:
    b += b"\0" * (len(b) % 2)
    s: int = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
    csum = _checksum(hdr + PAYLOAD)
    return struct.pack("!BBHHH", 8, 0, csum, ident, seq & 0xFFFF) + PAYLOAD


def _round(sock: socket.socket, ident: int, seq: int, targets: set[str],
           interval: float) -> tuple[int, dict[str, float]]:
    """One echo to each target, then up to ``interval`` for their replies (less when all
    answer): the next sequence number, and who answered when."""
    for t in sorted(targets):
        seq += 1
        # EHOSTUNREACH while ARP fails: the next round tries again.
        with contextlib.suppress(OSError):
            sock.sendto(_echo(ident, seq), (t, 0))
    answered: dict[str, float] = {}
    end = time.monotonic() + interval
    while len(answered) < len(targets) and (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            continue
        while True:
            try:
                data, (src, _) = sock.recvfrom(2048)
            except BlockingIOError:
                break
            ihl = (data[0] & 0x0F) * 4
            icmp_type, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if icmp_type == 0 and rid == ident and src in targets:
                answered.setdefault(src, time.time())
    return seq, answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ICMP prober (see testbed/prober.py)")
    parser.add_argument("--retrans-ms", required=True)
    parser.add_argument("--deadline", type=float, required=True, help="epoch")
    parser.add_argument("--interval", type=float, required=True, help="seconds between rounds")
    parser.add_argument("--quiet", type=float, default=0.0)
    parser.add_argument("--not-in", required=True, help="the starter's network namespace")
    args = parser.parse_args(argv)
    if args.not_in == _netns_id():
        # It lowers the namespace's ARP timers: never those of the namespace it was started from.
        print("refused: run me in a container's network namespace", flush=True)
        return 2
    pending = {t.strip() for t in sys.stdin.read().split() if t.strip()}
    base = "/proc/sys/net/ipv4/neigh"
    for dev in os.listdir(base):
        if dev != "lo":
            Path(base, dev, "retrans_time_ms").write_text(args.retrans_ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF
    seq = 0
    quiet_until = time.monotonic() + args.quiet
    while time.monotonic() < quiet_until:
        seq, answered = _round(sock, ident, seq, pending, args.interval)
        if answered:
            print("stale", flush=True)
            return 3
    print("ready", flush=True)
    first: dict[str, float] = {}
    while pending and time.time() < args.deadline:
        seq, answered = _round(sock, ident, seq, pending, args.interval)
        first.update(answered)
        pending -= answered.keys()
    print(json.dumps({"first": first, "missing": sorted(pending)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
