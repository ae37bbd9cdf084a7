"""The control plane at scale, simulated (issue 16): ``python -m bench.scale_sim``.

N simulated nodes (testbed/scalesim: each the plugin's real driver service and etcd control
plane on a fake kernel) in a few processes against one real etcd (Debian's 3.4) on loopback.
Per size: bootstrap, an idle window (keep-alives), probe joins on a quiet cluster, churn
(joins and leaves per second cluster-wide), then the loss of a share of the nodes.
JSON to build/bench/scale_sim.json, a table per size on stdout, the lag plot as a PNG.
"""
