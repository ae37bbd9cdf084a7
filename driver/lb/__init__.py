"""Service VIP load balancing on swarmnet networks.

Docker builds no VIP load balancer for plugin networks (moby adds it only for the
driver named ``overlay``), so we rebuild the pre-18.03 scheme: every container
joined to one of our networks gets, in its own network namespace, one IPVS
service per service VIP on that network.

- ``model``: the records (one per network and service) and what a sandbox holds.
- ``port``: what the load balancing asks of the kernel (``driver.kernel.lb`` is the
  netlink implementation, ``driver.kernel.fake_lb`` the in-memory one).
- ``collect``: manager side, pure: Docker's service and task view -> records.
- ``desired``: node side, pure: records + joined sandboxes -> what each sandbox holds.
- ``programmer``: node side: keeps every local sandbox equal to its desired state.
"""
