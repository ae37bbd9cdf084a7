"""The test beds: what stands up dockerd, etcd, namespaces and kernel-lab hosts, written once
for the test suites and the benchmarks (bench/ imports this, never tests/).

- ``dockerd``: one dockerd in a network namespace, the piece of every Docker bed;
- ``dockerhost``: one such dockerd on this host, in the host's mount namespace (e2e, vmswarm);
- ``multihost``: N of them, each in a mount namespace of its own, on one fabric with etcd;
- ``kernelhost`` and ``hostlab``: namespaces playing hosts that run the driver service on
  the real kernel, several on one switch (no dockerd);
- ``prober``: an ICMP prober run inside a container's network namespace;
- ``proc``, ``mounts``, ``cgroups``, ``netns``, ``image``, ``capture``, ``hub``, ``kernellab``:
  what these share.

Never shipped in the plugin (pyproject packages only plugin, driver and ipam).
"""
