"""What ``driver``, ``ipam`` and ``plugin`` share and none of them owns: the IP types
(iptypes.py), the error kinds (errors.py) and the store's key scheme (layout.py). It imports
nothing of ours."""
