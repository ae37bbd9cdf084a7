"""Pool and address allocation for swarmnet-overlay's IPAM driver.

Pure arithmetic lives in ``spans`` (sets of integer ranges) and ``subnets``
(the next free subnet, in order, with wrap-around). ``pools`` and ``addresses``
are the stored records and their pure transitions. ``service`` holds the use
cases and talks to the store only through the ``ports.KV`` port, always by
read-modify-write with ``KV.update``. Nothing here imports Flask, etcd,
pyroute2, ``driver`` or ``plugin``.
"""
