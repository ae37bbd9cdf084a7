"""What ``driver``, ``ipam`` and ``plugin`` share and none of them owns: the IP types
(iptypes.py), the error kinds (errors.py), the store's key scheme (layout.py) and the on/off
words of settings and options (switch.py). It imports nothing of ours."""
