"""Service VIP load balancing (issue 10): ``python -m bench.lb`` (``make bench-lb``).
See docs/benchmarks.md, "Service VIP load balancing"."""
