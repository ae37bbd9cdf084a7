"""The Kernel port and its implementations (netlink, and an in-memory fake for unit tests)."""
