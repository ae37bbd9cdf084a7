"""The watch relay: one watch on etcd, fanned out to many nodes (``swarmnet relay``).

Without it every node holds its own watch on ``<root>/peers/``, and etcd encodes every event
once per node: at 1,000 nodes and 100 events/s that is 100,000 watcher-events/s, about 6
etcd cores (docs/benchmarks.md). A relay, like Calico's Typha, holds one watch and one copy
of the prefix and serves the same two gateway calls a node's watcher makes (range and watch),
so a node needs only ``PEER_RELAYS`` to use it. Writes, leases and keep-alives still go to
etcd. Several relays may serve one cluster; a node tries its list in turn, and a relay that
loses etcd refuses, so nodes move on.

    feed.py      the copy of the prefix, its recent history and the open streams
    upstream.py  the thread that lists and watches etcd
    server.py    the HTTP side (asyncio)
    service.py   the parts put together: ``run``
"""

