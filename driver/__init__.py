"""Network-driver use cases for swarmnet-overlay (no Flask, no etcd, no pyroute2 here)."""
