"""Pool and address allocation for swarmnet-overlay's IPAM driver.

Pure arithmetic lives in ``spans`` (sets of integer ranges) and ``subnets``
(the next free subnet, in order, with wrap-around). ``pool_index`` (every pool
of a space) and ``pool_record`` (one pool's addresses) are the stored records and
their pure transitions, written as JSON by ``record_json``. ``service`` holds the
use cases and talks to the store only through the ``store_port.KV`` port, always
by read-modify-write with ``KV.update``; its keys come from ``core.layout``.
Nothing here imports Flask, etcd, pyroute2, ``driver`` or ``plugin``.
"""
