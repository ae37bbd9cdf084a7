"""The Kernel port over netlink (pyroute2), laid out as Docker's overlay driver does it.

Modules, one family each: ``network`` (namespace, bridge, VXLAN), ``endpoint``
(veth pairs), ``peers`` (FDB and neighbours), ``host`` (host facts, start-up
cleaning), ``reaper`` (batched veth deletion); ``handles``, ``links`` and
``onelink`` (the one-request link calls of Join, Leave and the reaper) are what
they share, and ``kernel`` puts the families together as ``NetlinkKernel``.

Per network, a named network namespace ``names.netns(id)`` under ``netns_dir``
holds a bridge ``names.BRIDGE`` and the VXLAN device ``names.VXLAN``. The VXLAN
device is created in the host namespace under a staging name and then moved:
its UDP socket stays on the host's underlay while its frames land on the bridge
in the network namespace. Gateways live on that bridge, so two networks may use
the same subnet.

Per endpoint, a veth pair: the host side (``names.veth_host``) in the host
namespace for Docker to move into the container, the bridge side
(``names.veth_bridge``) created directly in the network namespace.

Every netlink handle is opened and closed per call: a pyroute2 0.9 handle keeps
an event loop per thread, so one shared by request threads breaks. The requests
on every endpoint call's path go on a plain netlink socket (``onelink``), also
opened per call, since an ``IPRoute`` costs more CPU than the request itself. Calls on one
network are serialised by a per-network lock; creating and deleting staging
devices in the host namespace is serialised by one more lock. The bridge's
ifindex is cached per network, so the usual Join is a single request.

Deleting a veth pair costs the kernel 15-20 ms (it waits for an RCU grace
period), most of it outside RTNL. Leave does not wait for that: it retires the
pair (down, off the bridge, into ``RETIRED_GROUP``), and a reaper thread deletes
every retired device of a namespace in one request, so one grace period covers
a whole batch.
"""

from driver.kernel.netlink.handles import DEFAULT_NETNS_DIR
from driver.kernel.netlink.kernel import NetlinkKernel
from driver.kernel.netlink.links import RETIRED_GROUP

__all__ = ["DEFAULT_NETNS_DIR", "RETIRED_GROUP", "NetlinkKernel"]
