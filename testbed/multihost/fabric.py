"""The fabric: one bridge in a namespace of its own, with a veth to every node's namespace.

Nothing depends on the root namespace's addresses or iptables; no link of the lab ever
exists in the root namespace, even for a moment.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from collections.abc import Sequence

from pyroute2 import NetNS, netns

from testbed.proc import NETNS_DIR


def port_name(index: int) -> str:
    """The bridge port, in the fabric, of node ``index``."""
    return f"n{index}"


def make_fabric(fabric_netns: str, bridge_address: ipaddress.IPv4Interface,
                nodes: Sequence[tuple[int, str, ipaddress.IPv4Interface]]) -> None:
    """Namespaces, bridge and veths. ``nodes``: (index, netns, eth0 address) of each node."""
    netns.create(fabric_netns)
    for _, node_netns, _ in nodes:
        netns.create(node_netns)
    with NetNS(fabric_netns) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        ns.link("add", ifname="br0", kind="bridge")
        br = ns.link_lookup(ifname="br0")[0]
        ns.addr("add", index=br, address=str(bridge_address.ip),
                prefixlen=bridge_address.network.prefixlen)
        ns.link("set", index=br, state="up")
        for index, node_netns, _ in nodes:
            port = port_name(index)
            # Created here with its peer put straight into the node: no link ever exists in
            # the root namespace, even for a moment.
            ns.link("add", ifname=port, kind="veth",
                    peer={"ifname": "eth0", "net_ns_fd": node_netns})
            idx = ns.link_lookup(ifname=port)[0]
            ns.link("set", index=idx, master=br, state="up")
    for _, node_netns, address in nodes:
        with NetNS(node_netns) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            eth = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth, address=str(address.ip),
                    prefixlen=address.network.prefixlen)
            ns.link("set", index=eth, state="up")


def set_port(fabric_netns: str, index: int, state: str) -> None:
    """Node ``index``'s bridge port "up" or "down": its cable, plugged in or pulled."""
    with NetNS(fabric_netns) as ns:
        ns.link("set", index=ns.link_lookup(ifname=port_name(index))[0], state=state)


def remove_netns(name: str) -> None:
    path = NETNS_DIR / name
    with contextlib.suppress(OSError):
        netns.remove(name)
    if path.exists():  # a half-made one: the file without its mount
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        path.unlink(missing_ok=True)
