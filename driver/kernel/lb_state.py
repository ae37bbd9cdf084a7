"""What both LoadBalancer adapters accept as a sandbox's state (no kernel here).

A sandbox marks traffic by destination, so one VIP can carry one fwmark only, and
one fwmark keys one IPVS service: two virtual services sharing either cannot both
be programmed. That is a caller's mistake (two networks with the same subnet and
a VIP each at the same address, joined by one container), reported as ValueError
before anything is touched.
"""

from __future__ import annotations

from driver.lb.model import SandboxState


def check(state: SandboxState) -> None:
    marks: set[int] = set()
    vips = set()
    for service in state:
        if service.fwmark in marks:
            raise ValueError(f"fwmark {service.fwmark:#x} is used by two virtual services")
        if service.vip in vips:
            raise ValueError(f"VIP {service.vip} is used by two virtual services")
        marks.add(service.fwmark)
        vips.add(service.vip)
        for backend in service.backends:
            if not 0 <= backend.weight <= 0x7FFFFFFF:
                raise ValueError(f"backend {backend.ip} of VIP {service.vip}: weight out of range")
