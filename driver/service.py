"""The network-driver use cases on a node: libnetwork's remote NetworkDriver protocol, typed.

Each public method serves one protocol call and is idempotent, because Docker
retries. Kernel work for one network runs under that network's lock, so the
bridge, veths and peers of a network are never programmed by two threads at once.

``NetworkDriverService`` composes the driver's parts: the manager side
(``manager``: AllocateNetwork, FreeNetwork), this host's records (``local_state``),
peer programming (``peering``), start-up and broken networks (``reconcile``) and
``status``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from core.errors import BadRequest, Conflict, NotFound, Unsupported
from core.iptypes import IPAddress
from core.layout import StoreLayout
from driver import mac as macs
from driver import names
from driver import status as node_status
from driver.config import VXLAN_OVERHEAD, DriverConfig
from driver.encryption import Encryption
from driver.errors import InvalidArgument
from driver.ipsec_keys import encrypted_mtu
from driver.ipsec_store import IpsecStore, Rotation
from driver.kernel.ipsec_port import Ipsec
from driver.kernel.no_ipsec import NoIpsec
from driver.kernel.port import EndpointSpec, Kernel
from driver.keylocks import KeyedLocks
from driver.local_state import LocalState
from driver.manager import NetworkManager
from driver.messages import (
    CreateEndpoint,
    CreateNetwork,
    Join,
    JoinReply,
    NetworkOptions,
    NodeDiscovery,
)
from driver.peering import Peering
from driver.peers import ControlPlane, LocalControlPlane
from driver.reconcile import BrokenNetworks, Reconciler
from driver.records import EndpointRecord, NetworkRecord
from driver.store_port import KV
from driver.vni import VniAllocator

log = logging.getLogger(__name__)


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
        *,
        layout: StoreLayout,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.state = LocalState(local, layout, config)
        self.control: ControlPlane = control if control is not None else LocalControlPlane()
        self.vnis = VniAllocator(shared, layout.vni, config.vni_range)
        self.encryption = Encryption(
            ipsec if ipsec is not None else NoIpsec("no IPsec support was configured"),
            IpsecStore(shared, layout),
            self.state.vtep,
            config.encryption,
        )
        self.manager = NetworkManager(self.vnis, self.encryption)
        self._locks = KeyedLocks()
        self.broken = BrokenNetworks(config, kernel, self.state, self._locks)
        self.peering = Peering(
            kernel, self.state, self.control, self.encryption, self._locks, self.broken
        )
        self.startup = Reconciler(
            config, kernel, self.state, self.encryption, self.peering, self.vnis,
            self._locks, self.broken,
        )  # fmt: skip
        # Called after a Join or Leave changed which sandboxes are on our networks
        # (load balancing programs them); must not block.
        self.on_sandbox_change: Callable[[], None] = lambda: None

    def _locked(self, network_id: str) -> contextlib.AbstractContextManager[None]:
        return self._locks.hold(network_id)

    def _mtu(self, options: NetworkOptions) -> int:
        if options.mtu is not None:
            return options.mtu
        underlay = self.config.mtu or self.kernel.underlay_mtu(self.state.vtep())
        if options.encrypted:
            return encrypted_mtu(underlay, VXLAN_OVERHEAD)
        return underlay - VXLAN_OVERHEAD

    # -- start-up, status and the way out -------------------------------------

    def reconcile(self) -> list[str]:
        """Make the kernel match the store (``driver.reconcile``). A line per change."""
        return self.startup.reconcile()

    def retry_broken(self) -> list[str]:
        """Try every network that could not be rebuilt again. A line per network rebuilt."""
        return self.broken.retry()

    def status(self) -> Mapping[str, object]:
        return node_status.status(self.config, self.kernel, self.state, self.peering, self.broken)

    def close(self) -> None:
        """On the way out: the control plane writes what is queued, then stops."""
        self.broken.close()
        self.control.close()

    def rotate_keys(self) -> Rotation:
        """``swarmnet rotate-keys``: a new IPsec key generation for every encrypted network."""
        return self.encryption.rotate()

    # -- protocol calls ------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return Capabilities(scope=self.config.scope, connectivity_scope=self.config.scope)

    def create_network(self, req: CreateNetwork) -> None:
        encrypted = req.options.encrypted
        if encrypted and self._refused_here(req.network_id):  # before anything is made
            return
        vni_opt = req.options.vni
        mtu = self._mtu(req.options)
        with self._locked(req.network_id):
            existing = self.state.network(req.network_id)
            if existing is None:
                self.state.refuse_name_clash(req.network_id)
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
                tuned=req.options.tuning and not encrypted,
                options=req.options.raw,
            )
            with contextlib.ExitStack() as undo:
                if existing is None and self.config.scope == "local":
                    # No FreeNetwork follows a failed CreateNetwork in local scope.
                    undo.callback(self.vnis.release, req.network_id)
                if encrypted:
                    # The block and in policies exist before the VXLAN device does.
                    self.encryption.attach(req.network_id)
                    undo.callback(self.encryption.detach, req.network_id)
                self.peering.forget(req.network_id)
                if existing is None:
                    undo.callback(self.kernel.remove_network, req.network_id)
                else:
                    # A refused change to a network that exists must leave it as it was.
                    undo.callback(self._restore, existing)
                self.kernel.ensure_network(self.state.spec(net))
                self.state.put_network(net)
                undo.pop_all()
            self.broken.discard(req.network_id)
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
            self.state.refuse(network_id, str(e))
            log.warning("network %s: refused on this node: %s", names.short(network_id), e)
            return True
        self.state.unrefuse(network_id)  # the kernel has ESP now (after a reboot)
        return False

    def _restore(self, net: NetworkRecord) -> None:
        """Undo step: put the kernel back to the stored record; the original error wins."""
        try:
            self.kernel.ensure_network(self.state.spec(net))
        except Exception as e:
            log.error("network %s: could not restore after a refused change: %s",
                      names.short(net.network_id), e)

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
        except (BadRequest, NotFound):
            raise  # the request's fault, not the store's
        except Exception as e:
            log.warning(
                "network %s: could not confirm VNI %d in the shared store (%s); using it anyway",
                names.short(network_id),
                vni,
                e,
            )

    def delete_network(self, network_id: str) -> None:
        self.control.unwatch(network_id)
        with self._locked(network_id):
            self.state.unrefuse(network_id)
            net = self.state.network(network_id)
            if net is None and self.state.short_id_owner(network_id) is not None:
                # The namespace with this name belongs to another network: not ours to remove.
                log.info(
                    "network %s: DeleteNetwork for an unknown network", names.short(network_id)
                )
                if self.config.scope == "local":
                    self.vnis.release(network_id)
                return
            for eid in self.state.endpoint_ids(network_id):
                log.warning(
                    "network %s: deleting leftover endpoint %s",
                    names.short(network_id),
                    names.short(eid),
                )
                self.peering.withdraw(network_id, eid)
                self.kernel.remove_endpoint(network_id, eid)
                self.state.delete_endpoint(network_id, eid)
            self.peering.forget(network_id)
            self.kernel.remove_network(network_id)
            if (net is not None and net.encrypted) or self.encryption.attached(network_id):
                # After the VXLAN device is gone; before the record, so a retry repeats it.
                self.encryption.detach(network_id)
            self.state.delete_network(network_id)
            self.broken.discard(network_id)
            if self.config.scope == "local":
                # No FreeNetwork comes in local scope: the VNI is ours to release, even
                # without a record (a crash between allocating it and writing the record).
                self.vnis.release(network_id)
        if net is None:
            log.info("network %s: DeleteNetwork for an unknown network", names.short(network_id))
        else:
            log.info("network %s: deleted", names.short(network_id))

    def create_endpoint(self, req: CreateEndpoint) -> str | None:
        """Record the endpoint. Returns the MAC to report to Docker, or None if Docker chose one."""
        with self._locked(req.network_id):
            if self.state.refusal(req.network_id) is not None:
                # Refused at Join, not here: dockerd 20.10 detaches a container from a swarm
                # network only if it got a sandbox, so a CreateEndpoint error would leave
                # its attachment task behind and keep `docker network rm` failing.
                return None
            self.state.require_network(req.network_id)
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
            existing = self.state.endpoint(req.network_id, req.endpoint_id)
            if existing is None:
                self.state.refuse_endpoint_name_clash(req.network_id, req.endpoint_id)
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
            self.state.put_endpoint(record)
        log.info(
            "endpoint %s: created on network %s (%s, %s)",
            names.short(req.endpoint_id),
            names.short(req.network_id),
            req.address or req.address_v6,
            mac,
        )
        return None if req.mac is not None else mac

    def endpoint_info(self, network_id: str, endpoint_id: str) -> Mapping[str, object]:
        ep = self.state.require_endpoint(network_id, endpoint_id)
        net = self.state.require_network(network_id)
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
            if self.state.refusal(network_id) is not None:
                return  # nothing was made for it (CreateEndpoint on a refused network)
            ep = self.state.endpoint(network_id, endpoint_id)
            if ep is None or ep.joined:
                # No Leave came (or this is a retry whose record is gone): undo what Join
                # did. After a Leave there is nothing left: it withdrew the record and
                # retired the veth, so skip the netlink work on the usual path.
                self.peering.withdraw(network_id, endpoint_id)
                self.kernel.retire_endpoint(network_id, endpoint_id)
            self.state.delete_endpoint(network_id, endpoint_id)
        if ep is None:
            log.info(
                "endpoint %s: DeleteEndpoint for an unknown endpoint", names.short(endpoint_id)
            )
        else:
            log.info("endpoint %s: deleted", names.short(endpoint_id))

    def join(self, req: Join) -> JoinReply:
        with self._locked(req.network_id):
            reason = self.state.refusal(req.network_id)
            if reason is not None:
                raise Unsupported(reason)
            net = self.state.require_network(req.network_id)
            self.broken.rebuild_if_broken(net)
            ep = self.state.require_endpoint(req.network_id, req.endpoint_id)
            if net.encrypted:
                self.encryption.require_support(req.network_id)
            spec = EndpointSpec(
                network_id=req.network_id, endpoint_id=req.endpoint_id, mac=ep.mac, mtu=net.mtu
            )
            with contextlib.ExitStack() as undo:
                links = self.kernel.ensure_endpoint(spec)
                undo.callback(self.kernel.remove_endpoint, req.network_id, req.endpoint_id)
                joined = ep.with_join(req.sandbox_key)
                self.state.put_endpoint(joined)
                undo.pop_all()
            # Under the lock, so a Leave cannot slip in between and be overtaken.
            # Publishing only queues the record; the control plane's thread sends it.
            self.peering.publish(joined)
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
            if self.state.refusal(network_id) is not None:
                return
            ep = self.state.endpoint(network_id, endpoint_id)
            self.peering.withdraw(network_id, endpoint_id)
            # The veth is deleted in the background: the kernel takes 15-20 ms for it.
            self.kernel.retire_endpoint(network_id, endpoint_id)
            if ep is not None:
                self.state.put_endpoint(ep.with_leave())
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
        if self.state.learned_vtep() == node.address:
            return
        self.state.set_vtep(node.address)
        log.info("this node's data-path address is %s", node.address)
        self.peering.announce()
        if self.config.data_path_addr is None:
            # Endpoints published before we knew our address (or under an old one).
            for ep in self.state.joined_endpoints():
                self.peering.publish(ep)

    def discover_delete(self, node: NodeDiscovery) -> None:
        log.debug("DiscoverDelete for node %s", node.address)


def not_unicast(addr: IPAddress) -> str | None:
    """Why ``addr`` cannot be a VTEP (a VXLAN device's local address), or None."""
    if addr.is_unspecified:
        return "the unspecified address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.version == 4 and addr == IPv4Address("255.255.255.255"):
        return "the broadcast address"
    return None
