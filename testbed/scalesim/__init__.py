"""Simulated nodes for the control plane at scale (bench/scale_sim, tests/integration).

A simulated node is the plugin's real node-side code, without Docker and without a kernel:
``NetworkDriverService`` (Join, Leave, peer programming) with the real etcd control plane
(``EtcdControlPlane``: its lease, keep-alives, outbox writes and watch stream), programming a
``FakeKernel`` that notes when each remote entry arrives. ``node.py`` builds one; ``host.py``
is a process hosting many, driven over its stdin by bench/scale_sim.
"""
