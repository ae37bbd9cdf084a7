"""The etcd control plane: publish our endpoints, watch everyone's.

Two kinds of key (``core.layout``), both on the node's lease:

    <root>/nodes/<node-id>               this node is alive, and what it can do
                                         (nodes.py); <node-id> is the one kept at
                                         <root>/local/node-id
    <root>/peers/<network>/<endpoint>    one endpoint: IP, MAC, VTEP (driver.peers.PeerRecord)

A node that dies stops refreshing its lease; etcd then deletes its keys and every watcher
removes the dead node's FDB and neighbour entries, within the TTL. ``plane.py`` puts the
parts together: outbox.py (what we publish), keeper.py (the lease, and writing the outbox),
watcher.py (everyone's endpoints), handover.py (a graceful stop), gateway.py (etcd calls).
"""

from plugin.controlplane.handover import STOPPED_TTL
from plugin.controlplane.plane import EtcdControlPlane

__all__ = ["STOPPED_TTL", "EtcdControlPlane"]
