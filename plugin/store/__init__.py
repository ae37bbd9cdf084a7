"""Store adapters implementing the KV port of ``driver`` and ``ipam``."""
