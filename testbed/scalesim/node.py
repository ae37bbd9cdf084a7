"""One simulated node: the real driver service and etcd control plane on a fake kernel.

What a node owns, as a real one would: its own ``EtcdKV`` (so its own HTTP connection pool:
one connection for the watch stream, one for the keeper's lease and writes), its own lease,
its own watch stream on the peers prefix, its own keeper and watcher threads, its own local
store and fake kernel. What it shares with the other nodes of its process: the process
(the GIL, the allocator) and nothing else. The VNI table (manager-side bookkeeping, not the
control plane) lives in a per-node in-memory store.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.iptypes import IPAddress
from core.layout import StoreLayout
from driver import names
from driver.config import DriverConfig
from driver.kernel.fake import FakeKernel
from driver.kernel.port import Peer
from driver.messages import (
    CreateEndpoint,
    CreateNetwork,
    IPData,
    Join,
    NetworkOptions,
    NodeDiscovery,
)
from driver.peers import OnSnapshot, PeerRecord
from driver.service import NetworkDriverService
from plugin.app import STORE_ROOT
from plugin.controlplane import EtcdControlPlane
from plugin.store.etcd import EtcdKV
from plugin.store.memory import MemoryKV

if TYPE_CHECKING:
    from driver.peers import OnChanges

LAYOUT = StoreLayout(STORE_ROOT)
VNI_BASE = 4096
# Churn and probe endpoints get addresses with the third octet >= TRACKED_OCTET: the fake
# kernel notes when those arrive (bootstrap endpoints sit below it, to keep memory down).
TRACKED_OCTET = 128


def network_id(n: int) -> str:
    return hashlib.sha256(f"scale-sim-net-{n}".encode()).hexdigest()[:25]


def endpoint_id(node: int, k: int) -> str:
    return hashlib.sha256(f"scale-sim-ep-{node}-{k}".encode()).hexdigest()


def vtep_of(node: int) -> IPAddress:
    return ipaddress.ip_address(int(ipaddress.ip_address("172.16.0.1")) + node)


def bootstrap_ip(n: int, slot: int) -> IPAddress:
    """The ``slot``-th bootstrap address of network ``n`` (below TRACKED_OCTET)."""
    assert slot < TRACKED_OCTET * 256 - 2
    return ipaddress.ip_address(f"10.{n}.{(slot + 1) >> 8}.{(slot + 1) & 255}")


def tracked_ip(n: int, k: int) -> IPAddress:
    """The ``k``-th churn or probe address of network ``n`` (tracked by the fake kernel)."""
    k %= (256 - TRACKED_OCTET) * 256 - 2
    return ipaddress.ip_address(f"10.{n}.{TRACKED_OCTET + (k >> 8)}.{k & 255}")


class RecordingKernel(FakeKernel):
    """The fake kernel, noting (wall clock, comparable across processes on one machine)
    when a tracked peer was programmed and when any peer was removed."""

    def __init__(self) -> None:
        super().__init__(underlay_mtu=1500)
        self.added_at: dict[IPAddress, float] = {}
        self.removed_at: dict[IPAddress, float] = {}

    def ensure_peer(self, network_id: str, peer: Peer) -> None:
        super().ensure_peer(network_id, peer)
        if peer.ip.packed[2] >= TRACKED_OCTET:
            self.added_at[peer.ip] = time.time()

    def remove_peer(self, network_id: str, peer: Peer) -> None:
        super().remove_peer(network_id, peer)
        self.removed_at[peer.ip] = time.time()

    def peer_count(self) -> int:
        with self._lock:
            return sum(len(net.neighbours) for net in self.networks.values())

    def holds(self, ip: IPAddress) -> bool:
        net = self.networks.get(names.short(network_id(ip.packed[1])))
        return net is not None and ip in net.neighbours


class Traffic:
    """Requests and bytes (bodies and headers) this node sent to and got from etcd, by call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, list[int]] = {}  # call -> [requests, bytes sent, bytes received]

    def hook(self, resp: Any, *args: Any, **kwargs: Any) -> None:
        req = resp.request
        call = urlsplit(req.url).path.rsplit("/v3/", 1)[-1]
        sent = len(req.body or b"") + sum(len(k) + len(v) + 4 for k, v in req.headers.items())
        got = sum(len(k) + len(v) + 4 for k, v in resp.headers.items())
        if call != "watch":  # a stream: reading it here would take it from the watcher
            got += len(resp.content)
        with self._lock:
            row = self.calls.setdefault(call, [0, 0, 0])
            row[0] += 1
            row[1] += sent
            row[2] += got

    def snapshot(self) -> dict[str, list[int]]:
        with self._lock:
            return {k: list(v) for k, v in self.calls.items()}


def counting_client(traffic: Traffic) -> Callable[..., Any]:
    def factory(**kwargs: Any) -> Any:
        from etcd3gw.client import Etcd3Client

        client = Etcd3Client(**kwargs)
        client.session.hooks["response"].append(traffic.hook)
        return client

    return factory


class EventCount:
    """The control plane's metrics hook, counting watch events of watched networks."""

    def __init__(self) -> None:
        self.events = 0

    def etcd_reachable(self, reachable: bool) -> None:
        return None

    def watch_restarted(self) -> None:
        return None

    def record_changed(self, network_id: str, endpoint_id: str, record: PeerRecord | None) -> None:
        self.events += 1


class SplitControlPlane(EtcdControlPlane):
    """The etcd control plane with its two threads started apart: ``start`` (which the
    driver's start-up calls) runs the keeper only, ``start_watching`` the watcher.

    So a bench can publish every node's endpoints before any node watches, and each
    watcher lists once at start instead of following the whole bootstrap event by event
    (O(N^3) work that no real cluster, whose nodes come up over time, does at once)."""

    def start(self, on_snapshot: OnSnapshot, on_changes: OnChanges | None = None) -> None:
        if self._threads:
            return
        self._watcher.on_snapshot = on_snapshot
        self._watcher.on_changes = on_changes
        t = threading.Thread(target=self._keeper.run, name="swarmnet-keeper", daemon=True)
        t.start()
        self._threads.append(t)

    def start_watching(self) -> None:
        t = threading.Thread(target=self._watcher.run, name="swarmnet-watch", daemon=True)
        t.start()
        self._threads.append(t)

    def listed(self) -> bool:
        return self._watcher._listed


class SimNode:
    def __init__(
        self, index: int, etcd_url: str, ttl: int, networks: int, relays: Sequence[str] = ()
    ) -> None:
        """``relays``: follow the peers through these watch relays (in this order)."""
        self.index = index
        self.vtep = vtep_of(index)
        self.kernel = RecordingKernel()
        self.traffic = Traffic()
        self.counted = EventCount()
        kv = EtcdKV([etcd_url], client_factory=counting_client(self.traffic))
        watch_kv = (
            EtcdKV(relays, client_factory=counting_client(self.traffic)) if relays else None
        )
        self.control = SplitControlPlane(
            kv, ttl=ttl, node=f"sim-{index}", layout=LAYOUT, watch_kv=watch_kv
        )
        self.control.events = self.counted
        self.service = NetworkDriverService(
            DriverConfig(mtu=1500), self.kernel, MemoryKV(), MemoryKV(), self.control,
            layout=LAYOUT,
        )  # fmt: skip
        self.service.discover_new(NodeDiscovery(address=self.vtep, self_node=True))
        self.service.reconcile()  # the plugin's start: announces, starts the keeper
        for n in range(networks):
            self.service.create_network(
                CreateNetwork(
                    network_id=network_id(n),
                    options=NetworkOptions(vni=VNI_BASE + n),
                    ipv4=(
                        IPData(
                            pool=ipaddress.ip_network(f"10.{n}.0.0/16"),
                            gateway=ipaddress.ip_interface(f"10.{n}.255.254/16"),
                        ),
                    ),
                )
            )
        self.alive = True
        self.endpoints: dict[str, tuple[int, IPAddress]] = {}  # endpoint ID -> (network, IP)

    def join(self, n: int, eid: str, ip: IPAddress) -> float:
        """CreateEndpoint and Join, as Docker calls them; the wall clock at the Join."""
        nid = network_id(n)
        self.service.create_endpoint(
            CreateEndpoint(
                network_id=nid, endpoint_id=eid, address=ipaddress.ip_interface(f"{ip}/16")
            )
        )
        at = time.time()
        self.service.join(Join(network_id=nid, endpoint_id=eid, sandbox_key="/sim"))
        self.endpoints[eid] = (n, ip)
        return at

    def leave(self, eid: str) -> float:
        n, _ = self.endpoints.pop(eid)
        at = time.time()
        self.service.leave(network_id(n), eid)
        self.service.delete_endpoint(network_id(n), eid)
        return at

    def kill(self) -> None:
        """Stop without a hand-over: the keep-alives stop, the lease lapses within the TTL."""
        self.alive = False
        self.control.close()
