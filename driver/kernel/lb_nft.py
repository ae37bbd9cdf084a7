"""The sandbox's nftables table of ours: mark VIP traffic, answer pings to VIPs.

One table, ``ip swarmnet``, holds everything::

    table ip swarmnet {
        map vip-marks { type ipv4_addr : mark; elements = { VIP : MARK, ... } }
        set vips { type ipv4_addr; elements = { VIP, ... } }
        chain vip-mark {
            type route hook output priority mangle; policy accept;
            meta mark & MARK_MASK == MARK_BASE ip daddr != @vips meta mark set 0
            ip daddr @vips meta mark set ip daddr map @vip-marks
        }
        chain vip-ping {
            type nat hook output priority -100; policy accept;
            ip daddr @vips icmp type echo-request dnat to 127.0.0.1
        }
    }

A ``route`` chain re-routes a packet whose mark it changed, so a marked packet
meets our policy rule; IPVS picks it up later in LOCAL_OUT by its fwmark, on
every port.

The first rule unmarks a packet IPVS has already sent to a remote backend. IPVS
passes such a packet through LOCAL_OUT again, and there NAT's hook (active once
any nat chain exists: our ping chain, or Docker's DNS rules in every container)
re-routes it with its mark, because its conntrack entry now looks DNATed. Still
marked, it met our rule and left through ``lo`` and was lost: measured under
kernel-lab, every connection to a remote backend timed out (SYNs counted on
``lo``'s TX) with the ping chain and ``net.ipv4.vs.conntrack=1``, and all went
through once that chain or that sysctl was removed, or with this rule. Unmarked,
the re-route takes the main table. A hairpin connection never takes this second
pass: IPVS keeps its local route. The ping DNAT is what Docker's overlay did (iptables ``-t nat -A
OUTPUT -d VIP -p icmp --icmp-type echo-request -j DNAT --to 127.0.0.1``); IPVS
balances no ICMP echo. (``priority dstnat`` is refused for the output hook by
nft 1.0.6, hence ``-100``, its value.)

Written with Debian's ``nft -f -`` as one script, ``add table; delete table;
table { ... }``: nft sends it as one netlink batch, so the table is replaced
atomically (no packet sees it half-made), a second run leaves one copy, and a
failure changes nothing. ``read`` lists the map with ``nft -j``.

Why not ``pyroute2.nftables`` (0.9.7), measured on this project's kernels:

- ``NFTables(version, attr_version, nfgen_family)`` takes no netns= and no
  fileno=; its socket lands in the calling thread's namespace (usable from a
  setns'd thread, but nothing in its API says so);
- adding the same table, chain and rule twice left the rule twice in the chain
  (``nft list ruleset`` showed ``ip daddr 10.0.0.2 accept`` two times), so
  idempotence would need a dump and handle-based deletes;
- every call is its own transaction, so replacing the table is not atomic
  (a single failing rule did raise NetlinkError here, but the lead measured a
  failing multi-message batch returning without an exception);
- its expression helpers cover address matches, verdicts and masquerade only:
  ``meta mark set``, map lookups and ``dnat`` would be hand-built netlink
  expressions; the module calls itself a prototype.

``nft`` runs as a child of a thread that is inside the sandbox's namespace: a
forked child starts in the namespace of the thread that forked it, so no
``nsenter`` is needed and nft talks to the same namespace as our IPVS socket.
The plugin's rootfs needs Debian's ``nftables`` package.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence

from driver.lb.model import MARK_BASE, MARK_MASK, SandboxState

TABLE = "swarmnet"
MARK_MAP = "vip-marks"
VIP_SET = "vips"
NFT_TIMEOUT = 60.0  # seconds; nft answers in milliseconds, this only bounds a hang


class NftError(Exception):
    """nft failed; the message is nft's own (its first lines of stderr)."""


def _remove_table() -> str:
    # "add" first makes the "delete" valid whether or not the table exists.
    return f"add table ip {TABLE}\ndelete table ip {TABLE}\n"


def ruleset(state: SandboxState) -> str:
    """The nft script that makes the table of ours hold exactly ``state`` (none if empty)."""
    if not state:
        return _remove_table()
    marks = ", ".join(f"{s.vip} : {s.fwmark:#x}" for s in state)
    vips = ", ".join(str(s.vip) for s in state)
    return _remove_table() + (
        f"table ip {TABLE} {{\n"
        f"\tmap {MARK_MAP} {{\n\t\ttype ipv4_addr : mark\n\t\telements = {{ {marks} }}\n\t}}\n"
        f"\tset {VIP_SET} {{\n\t\ttype ipv4_addr\n\t\telements = {{ {vips} }}\n\t}}\n"
        "\tchain vip-mark {\n"
        "\t\ttype route hook output priority mangle; policy accept;\n"
        f"\t\tmeta mark & {MARK_MASK:#x} == {MARK_BASE:#x} ip daddr != @{VIP_SET} meta mark set 0\n"
        f"\t\tip daddr @{VIP_SET} meta mark set ip daddr map @{MARK_MAP}\n"
        "\t}\n"
        "\tchain vip-ping {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f"\t\tip daddr @{VIP_SET} icmp type echo-request dnat to 127.0.0.1\n"
        "\t}\n"
        "}\n"
    )


def parse_marks(listing: str) -> dict[int, ipaddress.IPv4Address]:
    """fwmark -> VIP, from ``nft -j list map ip swarmnet vip-marks``."""
    found: dict[int, ipaddress.IPv4Address] = {}
    for item in json.loads(listing).get("nftables", []):
        nft_map = item.get("map") if isinstance(item, dict) else None
        if not nft_map or nft_map.get("name") != MARK_MAP:
            continue
        for elem in nft_map.get("elem", []):
            key, value = elem
            found[int(value)] = ipaddress.IPv4Address(key)
    return found


def run(nft: str, args: Sequence[str], script: str | None = None) -> str:
    """Run nft in the calling thread's network namespace; its stdout."""
    try:
        done = subprocess.run(
            [nft, *args],
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise NftError(f"{nft} not found (Debian package nftables)") from exc
    except subprocess.TimeoutExpired as exc:
        raise NftError(f"{nft} {' '.join(args)}: no answer in {NFT_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        detail = " ".join(done.stderr.strip().splitlines()[:3]) or f"exit {done.returncode}"
        raise NftError(f"{nft} {' '.join(args)}: {detail}")
    return done.stdout


def apply(nft: str, state: SandboxState) -> None:
    run(nft, ["-f", "-"], ruleset(state))


def read_marks(nft: str) -> dict[int, ipaddress.IPv4Address]:
    """fwmark -> VIP as the table of ours holds them; empty if there is no table."""
    try:
        listing = run(nft, ["-j", "list", "map", "ip", TABLE, MARK_MAP])
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return {}
        raise
    return parse_marks(listing)
