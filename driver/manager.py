"""Manager-side work: AllocateNetwork and FreeNetwork, as libnetwork's ``ovmanager`` does it.

A swarm manager allocates once per network for the whole swarm: the VNI (from the
shared table) and, for an encrypted network, the IPsec key ring. Every node's
CreateNetwork gets the VNI back among the network's options. Nothing here touches
the kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType

from driver import names
from driver.encryption import Encryption
from driver.messages import OPT_VNI, AllocateNetwork
from driver.vni import VniAllocator

log = logging.getLogger(__name__)


class NetworkManager:
    def __init__(self, vnis: VniAllocator, encryption: Encryption) -> None:
        self.vnis = vnis
        self.encryption = encryption

    def allocate_network(self, req: AllocateNetwork) -> Mapping[str, str]:
        """Choose the VNI; every node's CreateNetwork gets it back."""
        # No ESP check here: swarmkit allocates asynchronously, so a refusal would reach
        # nobody (the network stays unallocated, its tasks stay New without an error).
        # Nodes that cannot encrypt refuse its endpoints instead (at Join).
        # The options were checked by the codec, so a bad MTU has already failed
        # `docker network create`.
        vni = self.vnis.allocate(req.network_id, req.options.vni)
        if req.options.encrypted:
            self.encryption.ensure_keys()
        log.info("network %s: allocated VNI %d", names.short(req.network_id), vni)
        return MappingProxyType({**req.options.raw, OPT_VNI: str(vni)})

    def free_network(self, network_id: str) -> None:
        vni = self.vnis.release(network_id)
        if vni is None:
            log.info("network %s: FreeNetwork for a network with no VNI", names.short(network_id))
        else:
            log.info("network %s: released VNI %d", names.short(network_id), vni)
