"""Benchmarks. `make bench` runs ``python -m bench.run`` (issue 6): swarmnet-overlay side by side
with Docker's built-in overlay on the multi-host lab. See docs/benchmarks.md."""
