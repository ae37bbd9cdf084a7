"""What ``driver``, ``ipam`` and ``plugin`` share and none of them owns: the store's key scheme."""
