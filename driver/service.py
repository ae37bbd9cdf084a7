"""The network-driver use cases: libnetwork's remote NetworkDriver protocol, typed.

Each public method serves one protocol call and is idempotent, because Docker
retries. Kernel work for one network runs under that network's lock, so the
bridge, veths and peers of a network are never programmed by two threads at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from types import MappingProxyType

from driver import mac as macs
from driver import names
from driver.config import VXLAN_OVERHEAD, DriverConfig
from driver.encryption import Encryption, Ipsec, NoIpsec
from driver.errors import Conflict, DriverError, InvalidArgument, UnknownObject, Unsupported
from driver.events import NO_EVENTS, DriverEvents
from driver.ipsec_keys import encrypted_mtu
from driver.ipsec_store import Rotation
from driver.kernel.port import EndpointSpec, IPAddress, Kernel, NetworkSpec, Peer
from driver.keylocks import KeyedLocks
from driver.messages import (
    AllocateNetwork,
    CreateEndpoint,
    CreateNetwork,
    Join,
    JoinReply,
    NodeDiscovery,
)
from driver.peers import ControlPlane, LocalControlPlane, PeerRecord, Snapshot, converge
from driver.ports import KV
from driver.records import (
    ENDPOINTS_PREFIX,
    NETWORKS_PREFIX,
    NODE_KEY,
    EndpointRecord,
    NetworkRecord,
    NodeRecord,
    endpoint_key,
    endpoint_prefix,
    network_key,
    refused_key,
)
from driver.vni import VniAllocator, parse_vni

log = logging.getLogger(__name__)

OPT_VNI = "swarmnet.vni"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_ENCRYPTED = "encrypted"
MIN_MTU = 576  # smallest MTU that still carries an IPv4 datagram without fragmentation rules biting
# How often a network that could not be rebuilt at start is tried again.
RETRY_INTERVAL = 30.0


@dataclass(frozen=True)
class Capabilities:
    scope: str
    connectivity_scope: str


class NetworkDriverService:
    def __init__(
        self,
        config: DriverConfig,
        kernel: Kernel,
        local: KV,
        shared: KV,
        control: ControlPlane | None = None,
        ipsec: Ipsec | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.local = local
        self.control: ControlPlane = control if control is not None else LocalControlPlane()
        self.vnis = VniAllocator(shared, config.vni_range)
        self.encryption = Encryption(
            ipsec if ipsec is not None else NoIpsec("no IPsec support was configured"),
            shared,
            lambda: self._vtep().vtep,
            config.encryption,
        )
        self._locks = KeyedLocks()
        # Networks that could not be rebuilt at start: network ID -> why. Retried
        # in the background and on the next call for them; shown by status.
        self._broken: dict[str, str] = {}
        self._retry_stop = threading.Event()
        self._retrier: threading.Thread | None = None
        self.retry_interval = RETRY_INTERVAL
        # Per network, under its lock: the remote peers last programmed.
        self._programmed: dict[str, frozenset[Peer]] = {}
        # Called after a Join or Leave changed which sandboxes are on our networks
        # (load balancing programs them); must not block.
        self.on_sandbox_change: Callable[[], None] = lambda: None
        self.events: DriverEvents = NO_EVENTS  # metrics hook (driver/events.py)

    # -- helpers -------------------------------------------------------------

    def _locked(self, network_id: str) -> contextlib.AbstractContextManager[None]:
        return self._locks.hold(network_id)

    def _network(self, network_id: str) -> NetworkRecord | None:
        raw = self.local.get(network_key(network_id))
        return None if raw is None else NetworkRecord.from_json(raw)

    def _require_network(self, network_id: str) -> NetworkRecord:
        net = self._network(network_id)
        if net is None:
            raise UnknownObject(f"NetworkID: unknown network {names.short(network_id)}")
        return net

    def _endpoint(self, network_id: str, endpoint_id: str) -> EndpointRecord | None:
        raw = self.local.get(endpoint_key(network_id, endpoint_id))
        return None if raw is None else EndpointRecord.from_json(raw)

    def _require_endpoint(self, network_id: str, endpoint_id: str) -> EndpointRecord:
        ep = self._endpoint(network_id, endpoint_id)
        if ep is None:
            raise UnknownObject(
                f"EndpointID: unknown endpoint {names.short(endpoint_id)} "
                f"on network {names.short(network_id)}"
            )
        return ep

    def node(self) -> NodeRecord:
        raw = self.local.get(NODE_KEY)
        return NodeRecord.from_json(raw) if raw else NodeRecord()

    def _vtep(self) -> NodeRecord:
        if self.config.data_path_addr is not None:
            return NodeRecord(vtep=self.config.data_path_addr)
        return self.node()

    def _spec(self, net: NetworkRecord) -> NetworkSpec:
        return NetworkSpec(
            network_id=net.network_id,
            vni=net.vni,
            mtu=net.mtu,
            # Encrypted networks get their own port: xfrm policies select by port, not VNI.
            vxlan_port=self.config.encryption.port if net.encrypted else self.config.vxlan_port,
            bridge_addresses=net.gateways,
            local_vtep=self._vtep().vtep,
        )

    def _peer_record(self, ep: EndpointRecord) -> PeerRecord | None:
        vtep = self._vtep().vtep
        iface = ep.address or ep.address_v6
        if vtep is None or iface is None:
            return None
        return PeerRecord(
            network_id=ep.network_id,
            endpoint_id=ep.endpoint_id,
            ip=iface.ip,
            mac=ep.mac,
            vtep=vtep,
        )

    def _publish(self, ep: EndpointRecord) -> None:
        record = self._peer_record(ep)
        if record is None:
            log.warning(
                "endpoint %s: not published: this node's data-path address is not known yet",
                names.short(ep.endpoint_id),
            )
            return
        self.control.publish(record)

    def _on_snapshot(self, network_id: str, snapshot: Snapshot, *, recheck: bool = False) -> None:
        local = self._vtep().vtep
        want = frozenset(r.peer() for r in snapshot.values() if r.vtep != local)
        with self._locked(network_id):
            net = self._network(network_id)
            # Most snapshots change nothing here (events about our own endpoints) or
            # one peer: diff against what we last programmed instead of dumping the
            # FDB and neighbour table every time. The control plane's periodic
            # recheck compares with the kernel, so drift cannot last.
            known = self._programmed.pop(network_id, None)
            have = None if recheck else known
            if net is None or network_id in self._broken:
                # A broken network has no device to program; the periodic recheck
                # after its rebuild diffs against the kernel.
                return
            if have == want:
                self._programmed[network_id] = want
                self.events.peers_programmed(  # metrics hook
                    network_id, snapshot, local, added=0, removed=0, recheck=recheck
                )
                return
            if not net.encrypted:
                added, removed = converge(self.kernel, network_id, want, have)
            else:
                # SAs and policies for a new peer before its FDB entries (if this raises,
                # no entry is made: fail closed); a departed peer's pair after its entries.
                vteps = {p.vtep for p in want}
                self.encryption.add_peers(network_id, vteps)
                added, removed = converge(self.kernel, network_id, want, have)
                self.encryption.set_peers(network_id, vteps)
            # Only after success: after a failure the next snapshot diffs with the kernel.
            self._programmed[network_id] = want
            self.events.peers_programmed(  # metrics hook
                network_id, snapshot, local, added=added, removed=removed, recheck=recheck
            )

    def _mtu(self, options: Mapping[str, str], encrypted: bool = False) -> int:
        raw = options.get(OPT_MTU)
        if raw not in (None, ""):
            assert raw is not None
            try:
                mtu = int(raw)
            except ValueError:
                raise InvalidArgument(f"{OPT_MTU}: {names.cut(raw)} is not an integer") from None
            if not MIN_MTU <= mtu <= 65535:
                raise InvalidArgument(f"{OPT_MTU}: {mtu} is outside {MIN_MTU}-65535")
            return mtu
        underlay = self.config.mtu or self.kernel.underlay_mtu(self._vtep().vtep)
        if encrypted:
            return encrypted_mtu(underlay, VXLAN_OVERHEAD)
        return underlay - VXLAN_OVERHEAD

    @staticmethod
    def _encrypted(options: Mapping[str, str]) -> bool:
        if OPT_ENCRYPTED not in options:
            return False
        value = options[OPT_ENCRYPTED].strip().lower()
        # `--opt encrypted` arrives with an empty value; anything but an explicit "false" means yes.
        return value not in ("false", "0", "no", "off")

    # -- protocol calls ------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return Capabilities(scope=self.config.scope, connectivity_scope=self.config.scope)

    def allocate_network(self, req: AllocateNetwork) -> Mapping[str, str]:
        """Swarm manager side: choose the VNI; every node's CreateNetwork gets it back."""
        encrypted = self._encrypted(req.options)
        # No ESP check here: swarmkit allocates asynchronously, so a refusal would reach
        # nobody (the network stays unallocated, its tasks stay New without an error).
        # Nodes that cannot encrypt refuse its endpoints instead (_refused_here).
        self._mtu(req.options)  # validate now, so a bad MTU fails `docker network create`
        requested = req.options.get(OPT_VNI)
        vni = self.vnis.allocate(
            req.network_id, parse_vni(requested, OPT_VNI) if requested else None
        )
        if encrypted:
            self.encryption.ensure_keys()
        log.info("network %s: allocated VNI %d", names.short(req.network_id), vni)
        return MappingProxyType({**req.options, OPT_VNI: str(vni)})

    def free_network(self, network_id: str) -> None:
        vni = self.vnis.release(network_id)
        if vni is None:
            log.info("network %s: FreeNetwork for a network with no VNI", names.short(network_id))
        else:
            log.info("network %s: released VNI %d", names.short(network_id), vni)

    def create_network(self, req: CreateNetwork) -> None:
        encrypted = self._encrypted(req.options)
        if encrypted and self._refused_here(req.network_id):  # before anything is made
            return
        requested = req.options.get(OPT_VNI)
        vni_opt = parse_vni(requested, OPT_VNI) if requested else None
        mtu = self._mtu(req.options, encrypted)
        with self._locked(req.network_id):
            existing = self._network(req.network_id)
            if existing is None:
                self._refuse_name_clash(req.network_id)
            if existing is not None:
                vni = existing.vni
            elif vni_opt is not None and self.config.scope == "global":
                # The manager chose it in AllocateNetwork and every node got the same
                # value: it is the truth for the data path, whatever this node's table says.
                vni = vni_opt
                self._record_vni(req.network_id, vni)
            else:
                vni = self.vnis.allocate(req.network_id, vni_opt)
            net = NetworkRecord(
                network_id=req.network_id,
                vni=vni,
                mtu=mtu,
                internal=req.internal,
                encrypted=encrypted,
                gateways=tuple(d.gateway for d in (*req.ipv4, *req.ipv6) if d.gateway),
                options=MappingProxyType(dict(req.options)),
            )
            with contextlib.ExitStack() as undo:
                if existing is None and self.config.scope == "local":
                    # No FreeNetwork follows a failed CreateNetwork in local scope.
                    undo.callback(self.vnis.release, req.network_id)
                if encrypted:
                    # The block and in policies exist before the VXLAN device does.
                    self.encryption.attach(req.network_id)
                    undo.callback(self.encryption.detach, req.network_id)
                self._programmed.pop(req.network_id, None)
                if existing is None:
                    undo.callback(self.kernel.remove_network, req.network_id)
                else:
                    # A refused change to a network that exists must leave it as it was.
                    undo.callback(self._restore, existing)
                self.kernel.ensure_network(self._spec(net))
                self.local.put(network_key(req.network_id), net.to_json())
                undo.pop_all()
            self._broken.pop(req.network_id, None)
        self.control.watch(req.network_id)
        log.info(
            "network %s: created (VNI %d, MTU %d%s%s)",
            names.short(req.network_id),
            vni,
            mtu,
            ", internal" if req.internal else "",
            f", encrypted, UDP {self.config.encryption.port}" if encrypted else "",
        )

    def _refused_here(self, network_id: str) -> bool:
        """An encrypted network on a node whose kernel cannot do ESP.

        Standalone, CreateNetwork refuses (501): `docker network create` shows the message.
        In swarm, a refused CreateNetwork reaches nobody: the task fails in its preparation,
        and `docker run --network` waits for an attachment that never comes, then says
        "context deadline exceeded". So the network is recorded here as refused, with no
        kernel state at all (nothing can carry its traffic, in clear or otherwise), and
        every Join on it fails with the reason: that error is what `docker service ps
        --no-trunc` and `docker run` print. Returns True when refused.
        """
        try:
            self.encryption.require_support(network_id)
        except Unsupported as e:
            if self.config.scope != "global":
                raise
            self.local.put(refused_key(network_id), str(e).encode())
            log.warning("network %s: refused on this node: %s", names.short(network_id), e)
            return True
        self.local.delete(refused_key(network_id))  # the kernel has ESP now (after a reboot)
        return False

    def _refusal(self, network_id: str) -> str | None:
        reason = self.local.get(refused_key(network_id))
        return None if reason is None else reason.decode(errors="replace")

    def _refuse_if_refused(self, network_id: str) -> None:
        reason = self._refusal(network_id)
        if reason is not None:
            raise Unsupported(reason)

    def _restore(self, net: NetworkRecord) -> None:
        """Undo step: put the kernel back to the stored record; the original error wins."""
        try:
            self.kernel.ensure_network(self._spec(net))
        except Exception as e:
            log.error("network %s: could not restore after a refused change: %s",
                      names.short(net.network_id), e)

    def _refuse_name_clash(self, network_id: str) -> None:
        """Kernel names use the first 12 characters: two such networks would share a namespace."""
        short = names.short(network_id)
        for raw in self.local.list(NETWORKS_PREFIX).values():
            other = NetworkRecord.from_json(raw).network_id
            if other != network_id and names.short(other) == short:
                raise Conflict(
                    f"NetworkID: network {names.cut(network_id)} and network {names.cut(other)} "
                    f"share the first 12 characters ({short}), which name the kernel namespace; "
                    "they cannot both exist on this node"
                )

    def _record_vni(self, network_id: str, vni: int) -> None:
        """Confirm the manager's VNI in the shared table: bookkeeping, not a condition.

        The data path needs only the VNI that came with the request, so neither a
        disagreeing table nor an unreachable shared store may stop a node from
        creating the network (a container joining during an etcd outage needs it).
        """
        try:
            self.vnis.allocate(network_id, vni)
        except Conflict as e:
            # Only possible when this node's store is not the manager's (several
            # managers without etcd); the VNI from AllocateNetwork still wins.
            log.warning("network %s: VNI table disagrees: %s", names.short(network_id), e)
        except Exception as e:
            if getattr(e, "http_status", 500) < 500:
                raise
            log.warning(
                "network %s: could not confirm VNI %d in the shared store (%s); using it anyway",
                names.short(network_id),
                vni,
                e,
            )

    def delete_network(self, network_id: str) -> None:
        self.control.unwatch(network_id)
        with self._locked(network_id):
            self.local.delete(refused_key(network_id))
            net = self._network(network_id)
            if net is None and self._short_id_taken(network_id):
                net_id = network_id
                # The namespace with this name belongs to another network: not ours to remove.
                log.info("network %s: DeleteNetwork for an unknown network", names.short(net_id))
                if self.config.scope == "local":
                    self.vnis.release(network_id)
                return
            for key in self.local.list(endpoint_prefix(network_id)):
                eid = key.rsplit("/", 1)[1]
                log.warning(
                    "network %s: deleting leftover endpoint %s",
                    names.short(network_id),
                    names.short(eid),
                )
                self.control.withdraw(network_id, eid)
                self.kernel.remove_endpoint(network_id, eid)
                self.local.delete(key)
            self._programmed.pop(network_id, None)
            self.kernel.remove_network(network_id)
            if (net is not None and net.encrypted) or self.encryption.attached(network_id):
                # After the VXLAN device is gone; before the record, so a retry repeats it.
                self.encryption.detach(network_id)
            self.local.delete(network_key(network_id))
            self._broken.pop(network_id, None)
            if self.config.scope == "local":
                # No FreeNetwork comes in local scope: the VNI is ours to release, even
                # without a record (a crash between allocating it and writing the record).
                self.vnis.release(network_id)
        if net is None:
            log.info("network %s: DeleteNetwork for an unknown network", names.short(network_id))
        else:
            log.info("network %s: deleted", names.short(network_id))

    def _short_id_taken(self, network_id: str) -> bool:
        """Whether another stored network has this network's 12-character kernel name."""
        short = names.short(network_id)
        for raw in self.local.list(NETWORKS_PREFIX).values():
            other = NetworkRecord.from_json(raw).network_id
            if other != network_id and names.short(other) == short:
                return True
        return False

    def _refuse_endpoint_name_clash(self, network_id: str, endpoint_id: str) -> None:
        """Veth names use the first 12 characters: two such endpoints would share a veth.

        Checked within the network (a range read of that prefix, so CreateEndpoint
        stays cheap); across networks only the host side could clash, and only
        until Docker moves it into the container.
        """
        short = names.short(endpoint_id)
        for key in self.local.list(endpoint_prefix(network_id) + short):
            other = key.rsplit("/", 1)[1]
            if other != endpoint_id and names.short(other) == short:
                raise Conflict(
                    f"EndpointID: endpoint {names.cut(endpoint_id)} and endpoint "
                    f"{names.cut(other)} share the first 12 characters ({short}), which name "
                    "their veth devices; they cannot both exist on this node"
                )

    def create_endpoint(self, req: CreateEndpoint) -> str | None:
        """Record the endpoint. Returns the MAC to report to Docker, or None if Docker chose one."""
        with self._locked(req.network_id):
            if self._refusal(req.network_id) is not None:
                # Refused at Join, not here: dockerd 20.10 detaches a container from a swarm
                # network only if it got a sandbox, so a CreateEndpoint error would leave
                # its attachment task behind and keep `docker network rm` failing.
                return None
            self._require_network(req.network_id)
            if req.address is None and req.address_v6 is None and req.mac is None:
                raise InvalidArgument(
                    "Interface: neither Address, AddressIPv6 nor MacAddress given"
                )
            if req.mac is not None:
                mac = req.mac
            else:
                ip = req.address or req.address_v6
                assert ip is not None  # one of the three is given, checked above
                mac = macs.from_ip(ip.ip)
            existing = self._endpoint(req.network_id, req.endpoint_id)
            if existing is None:
                self._refuse_endpoint_name_clash(req.network_id, req.endpoint_id)
            record = EndpointRecord(
                network_id=req.network_id,
                endpoint_id=req.endpoint_id,
                mac=mac,
                address=req.address,
                address_v6=req.address_v6,
                joined=existing.joined if existing else False,
                sandbox_key=existing.sandbox_key if existing else "",
            )
            if existing is not None and existing != record:
                log.warning(
                    "endpoint %s: CreateEndpoint again with different data; keeping the new data",
                    names.short(req.endpoint_id),
                )
            self.local.put(endpoint_key(req.network_id, req.endpoint_id), record.to_json())
        log.info(
            "endpoint %s: created on network %s (%s, %s)",
            names.short(req.endpoint_id),
            names.short(req.network_id),
            req.address or req.address_v6,
            mac,
        )
        return None if req.mac is not None else mac

    def status(self) -> Mapping[str, object]:
        """What an operator asks first: which networks, how many endpoints and peers each.

        Read-only, from the store and the kernel; never key material.
        """
        networks = []
        for raw in self.local.list(NETWORKS_PREFIX).values():
            net = NetworkRecord.from_json(raw)
            eps = [
                EndpointRecord.from_json(v)
                for v in self.local.list(endpoint_prefix(net.network_id)).values()
            ]
            networks.append(
                {
                    "NetworkID": net.network_id,
                    "VNI": net.vni,
                    "MTU": net.mtu,
                    "Internal": net.internal,
                    "Encrypted": net.encrypted,
                    "Endpoints": len(eps),
                    "Joined": sum(1 for ep in eps if ep.joined),
                    "RemotePeers": self._peer_count(net.network_id),
                    # Why the network could not be rebuilt at start ("" when it is fine).
                    "Broken": self._broken.get(net.network_id, ""),
                }
            )
        vtep = self._vtep().vtep
        nodes = self.control.nodes() or {"": self._node_facts()}
        return {
            "Scope": self.config.scope,
            "VTEP": str(vtep) if vtep else "",
            "ControlPlane": self.control.describe(),
            "Networks": networks,
            # Which nodes can carry encrypted networks (each node's record says).
            "Nodes": [
                {
                    "Node": str(rec.get("vtep") or name or "this node"),
                    "ESP": rec.get("esp"),  # None: the node predates the field
                    "ESPDetail": str(rec.get("esp_detail") or ""),
                }
                for name, rec in sorted(
                    nodes.items(), key=lambda kv: str(kv[1].get("vtep") or kv[0])
                )
            ],
        }

    def _node_facts(self) -> Mapping[str, object]:
        """This node's record: whether its kernel can do ESP, and if not, what is missing."""
        esp = self.encryption.capability()
        vtep = self._vtep().vtep
        return {
            "vtep": str(vtep) if vtep else "",
            "esp": esp.supported,
            "esp_detail": "" if esp.supported else esp.detail,
        }

    def _peer_vteps(self, network_id: str) -> set[IPAddress]:
        try:
            return {p.vtep for p in self.kernel.peers(network_id)}
        except Exception:
            return set()  # a broken network: its peers come with the control plane's snapshot

    def _peer_count(self, network_id: str) -> int:
        try:
            return len(self.kernel.peers(network_id))
        except Exception:
            return 0  # a broken network's namespace may be gone; status must still answer

    def endpoint_info(self, network_id: str, endpoint_id: str) -> Mapping[str, object]:
        ep = self._require_endpoint(network_id, endpoint_id)
        net = self._require_network(network_id)
        return {
            "vni": net.vni,
            "mtu": net.mtu,
            "encrypted": net.encrypted,
            "mac": ep.mac,
            "address": str(ep.address) if ep.address else "",
            "joined": ep.joined,
            "bridge_veth": names.veth_bridge(endpoint_id),
        }

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        with self._locked(network_id):
            if self._refusal(network_id) is not None:
                return  # nothing was made for it (CreateEndpoint on a refused network)
            ep = self._endpoint(network_id, endpoint_id)
            if ep is None or ep.joined:
                # No Leave came (or this is a retry whose record is gone): undo what Join
                # did. After a Leave there is nothing left: it withdrew the record and
                # retired the veth, so skip the netlink work on the usual path.
                self.control.withdraw(network_id, endpoint_id)
                self.kernel.retire_endpoint(network_id, endpoint_id)
            self.local.delete(endpoint_key(network_id, endpoint_id))
        if ep is None:
            log.info(
                "endpoint %s: DeleteEndpoint for an unknown endpoint", names.short(endpoint_id)
            )
        else:
            log.info("endpoint %s: deleted", names.short(endpoint_id))

    def join(self, req: Join) -> JoinReply:
        with self._locked(req.network_id):
            self._refuse_if_refused(req.network_id)
            net = self._require_network(req.network_id)
            self._rebuild_if_broken(net)
            ep = self._require_endpoint(req.network_id, req.endpoint_id)
            if net.encrypted:
                self.encryption.require_support(req.network_id)
            spec = EndpointSpec(
                network_id=req.network_id, endpoint_id=req.endpoint_id, mac=ep.mac, mtu=net.mtu
            )
            with contextlib.ExitStack() as undo:
                links = self.kernel.ensure_endpoint(spec)
                undo.callback(self.kernel.remove_endpoint, req.network_id, req.endpoint_id)
                joined = ep.with_join(req.sandbox_key)
                self.local.put(endpoint_key(req.network_id, req.endpoint_id), joined.to_json())
                undo.pop_all()
            # Under the lock, so a Leave cannot slip in between and be overtaken.
            # Publishing only queues the record; the control plane's thread sends it.
            self._publish(joined)
        self.on_sandbox_change()
        log.info(
            "endpoint %s: joined sandbox %s via %s",
            names.short(req.endpoint_id),
            req.sandbox_key,
            links.host_side,
        )
        return JoinReply(src_name=links.host_side, dst_prefix="eth")

    def leave(self, network_id: str, endpoint_id: str) -> None:
        with self._locked(network_id):
            if self._refusal(network_id) is not None:
                return
            ep = self._endpoint(network_id, endpoint_id)
            self.control.withdraw(network_id, endpoint_id)
            # The veth is deleted in the background: the kernel takes 15-20 ms for it.
            self.kernel.retire_endpoint(network_id, endpoint_id)
            if ep is not None:
                self.local.put(endpoint_key(network_id, endpoint_id), ep.with_leave().to_json())
        self.on_sandbox_change()
        log.info("endpoint %s: left", names.short(endpoint_id))

    def discover_new(self, node: NodeDiscovery) -> None:
        if not node.self_node:
            log.debug("DiscoverNew for remote node %s ignored", node.address)
            return
        why = not_unicast(node.address)
        if why is not None:
            # Stored, it would make every VXLAN device fail (EINVAL) from now on.
            raise InvalidArgument(
                f"DiscoveryData.Address: {node.address} is {why}, not this node's data-path address"
            )
        current = self.node()
        if current.vtep == node.address:
            return
        self.local.put(NODE_KEY, NodeRecord(vtep=node.address).to_json())
        log.info("this node's data-path address is %s", node.address)
        self.control.announce(self._node_facts())
        if self.config.data_path_addr is None:
            # Endpoints published before we knew our address (or under an old one).
            for ep in self._joined_endpoints():
                self._publish(ep)

    def _joined_endpoints(self) -> list[EndpointRecord]:
        eps = (EndpointRecord.from_json(raw) for raw in self.local.list(ENDPOINTS_PREFIX).values())
        return [ep for ep in eps if ep.joined]

    def discover_delete(self, node: NodeDiscovery) -> None:
        log.debug("DiscoverDelete for node %s", node.address)

    def close(self) -> None:
        """On the way out: the control plane writes what is queued, then stops."""
        self._retry_stop.set()
        if self._retrier is not None:
            self._retrier.join(timeout=10)
        self.control.close()

    def rotate_keys(self) -> Rotation:
        """``swarmnet rotate-keys``: a new IPsec key generation for every encrypted network."""
        return self.encryption.rotate()

    # -- start-up ------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Make the kernel match the store; remove what we own that the store does not know.

        Returns a line per change, which the caller logs.
        """
        changes: list[str] = []
        nets: dict[str, NetworkRecord] = {}
        for raw in self.local.list(NETWORKS_PREFIX).values():
            net = NetworkRecord.from_json(raw)
            nets[names.short(net.network_id)] = net
        present = self.kernel.network_ids()
        encrypted = {n.network_id for n in nets.values() if n.encrypted}
        # Block and in policies before any encrypted network's VXLAN device is (re)made.
        changes += self.encryption.prepare_host(encrypted)
        for short_id, net in nets.items():
            with self._locked(net.network_id):
                try:
                    self.kernel.ensure_network(self._spec(net))
                except Exception as e:
                    # One network that cannot be rebuilt must not keep the others down.
                    self._broken[net.network_id] = _reason(e)
                    log.error("network %s: could not be rebuilt, retrying every %.0f s: %s",
                              short_id, self.retry_interval, _reason(e))
                    changes.append(f"network {short_id}: broken, will retry ({_reason(e)})")
                    continue
                if short_id not in present:
                    changes.append(f"network {short_id}: recreated its namespace (VNI {net.vni})")
        for short_id in sorted(present - set(nets)):
            # network_ids() gives short IDs; remove_network only needs the prefix.
            self.kernel.remove_network(short_id)
            changes.append(f"network {short_id}: removed orphan namespace")
        joined: set[str] = set()
        alive: set[str] = set()  # joined endpoints whose veth is still in their network
        for net in nets.values():
            stored = {
                names.short(EndpointRecord.from_json(v).endpoint_id): EndpointRecord.from_json(v)
                for v in self.local.list(endpoint_prefix(net.network_id)).values()
            }
            joined |= {k for k, ep in stored.items() if ep.joined}
            try:
                veths = self.kernel.endpoint_ids(net.network_id)
            except Exception as e:
                log.error("network %s: cannot list its endpoints: %s",
                          names.short(net.network_id), _reason(e))
                continue
            alive |= {ep.endpoint_id for k, ep in stored.items() if ep.joined and k in veths}
            for short_eid in sorted(veths):
                ep = stored.get(short_eid)
                if ep is None or not ep.joined:
                    self.kernel.remove_endpoint(net.network_id, short_eid)
                    changes.append(
                        f"endpoint {short_eid}: removed orphan veth from network "
                        f"{names.short(net.network_id)}"
                    )
        for link in self.kernel.remove_orphan_links(joined):
            changes.append(f"link {link}: removed orphan")
        # Until the control plane's snapshots come, a network's peers are its FDB's VTEPs.
        seeds = {nid: self._peer_vteps(nid) for nid in sorted(encrypted)}
        changes += self.encryption.reconcile(seeds)
        self.control.announce(self._node_facts())
        self.control.start(self._on_snapshot)
        for net in nets.values():
            self.control.watch(net.network_id)
        changes += self._sweep_vnis(nets.values())
        if self._broken:
            self._start_retrier()
        for ep in self._joined_endpoints():
            if ep.endpoint_id in alive:
                self._publish(ep)
                continue
            # Its veth went with its container (a reboot, or the container died while
            # dockerd was down). dockerd sends no Leave for it then, so never advertise
            # it: other nodes would keep a stale entry for an address swarm may reuse.
            self.control.withdraw(ep.network_id, ep.endpoint_id)
            changes.append(
                f"endpoint {names.short(ep.endpoint_id)}: not published, its veth is gone"
            )
        return changes

    # -- networks that could not be rebuilt ----------------------------------

    def broken(self) -> Mapping[str, str]:
        return MappingProxyType(dict(self._broken))

    def _rebuild_if_broken(self, net: NetworkRecord) -> None:
        """Under the network's lock: one more try for a network that failed at start."""
        if net.network_id not in self._broken:
            return
        try:
            self.kernel.ensure_network(self._spec(net))
        except Exception as e:
            self._broken[net.network_id] = _reason(e)
            raise NetworkBroken(
                f"network {names.short(net.network_id)} could not be rebuilt on this node: "
                f"{_reason(e)}"
            ) from None
        del self._broken[net.network_id]
        self._programmed.pop(net.network_id, None)
        log.info("network %s: rebuilt", names.short(net.network_id))

    def retry_broken(self) -> list[str]:
        """Try every broken network again. Returns a line per network rebuilt."""
        fixed = []
        for network_id in list(self._broken):
            with self._locked(network_id):
                net = self._network(network_id)
                if net is None:
                    self._broken.pop(network_id, None)
                    continue
                try:
                    self._rebuild_if_broken(net)
                except NetworkBroken:
                    continue
            fixed.append(f"network {names.short(network_id)}: rebuilt")
        return fixed

    def _start_retrier(self) -> None:
        def run() -> None:
            while self._broken and not self._retry_stop.wait(self.retry_interval):
                self.retry_broken()

        self._retrier = threading.Thread(target=run, name="swarmnet-rebuild", daemon=True)
        self._retrier.start()

    def _sweep_vnis(self, nets: Iterable[NetworkRecord]) -> list[str]:
        """Release VNIs held for networks this host has no record of (local scope, one host).

        A crash between allocating a VNI and writing the network record leaves
        the VNI held by a network Docker was told failed; no DeleteNetwork comes.
        Only where the VNI table is this host's own: across hosts, another host's
        networks are not in our store.
        """
        if self.config.scope != "local" or self.vnis.store is not self.local:
            return []
        known = {n.network_id for n in nets}
        out = []
        for network_id in self.vnis.owners():
            if network_id not in known:
                vni = self.vnis.release(network_id)
                if vni is not None:
                    out.append(f"network {names.short(network_id)}: released orphan VNI {vni}")
        return out


class NetworkBroken(DriverError):
    """The network is in the store but its kernel state could not be made."""

    http_status = 503


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def not_unicast(addr: IPAddress) -> str | None:
    """Why ``addr`` cannot be a VTEP (a VXLAN device's local address), or None."""
    if addr.is_unspecified:
        return "the unspecified address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.version == 4 and addr == IPv4Address("255.255.255.255"):
        return "the broadcast address"
    return None
