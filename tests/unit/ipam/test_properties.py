"""Property tests: random request/release sequences against a simple model.

The model keeps plain sets and scans candidates one by one; the implementation
keeps ranges in a store and jumps over overlaps. After every step the two must
agree on the result of the call (or the error), and on the whole state read back
from the store. One rule swaps in a fresh service over the same store (a plugin
restart), so agreement after it shows a reload behaves identically. The store
forces a compare-and-swap retry on every update, so impure update functions
would show up as disagreements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ipam.config import IpamConfig
from ipam.errors import (
    AddressInUse,
    AddressOutOfPool,
    Exhausted,
    IpamError,
    PoolOverlap,
    UnknownPool,
)
from ipam.messages import AddressRequest, PoolRequest
from ipam.service import IpamService
from tests.unit.ipam.fakes import CasKV
from tests.unit.ipam.helpers import GATEWAY, GLOBAL, LAYOUT, SERIAL

DEFAULT_CHOICES = ["10.0.0.0/27", "10.0.1.0/28", "10.0.2.0/29", "10.0.3.0/30"]
HOST_CHOICES = ["10.0.0.8/29", "10.0.1.0/30", "10.0.3.0/24", "192.0.2.0/24"]


def explicit_subnets() -> list[IPv4Network]:
    nets: list[IPv4Network] = []
    for prefix in (27, 28, 29, 30):
        nets += list(IPv4Network("10.0.0.0/22").subnets(new_prefix=prefix))[::3]
    return nets


EXPLICIT = explicit_subnets()


@dataclass
class ModelPool:
    net: IPv4Network
    holders: dict[str, dict[str, str]] = field(default_factory=dict)
    used: set[IPv4Address] = field(default_factory=set)
    gateway: IPv4Address | None = None
    cursor: int = 0  # integer address the next serial scan starts at


class Model:
    def __init__(self, defaults: list[IPv4Network], mask: int, host: list[IPv4Network]) -> None:
        self.defaults, self.mask, self.host = defaults, mask, host
        self.pools: dict[str, ModelPool] = {}
        self.last: IPv4Network | None = None

    # -- pools ---------------------------------------------------------------------

    def next_subnet(self) -> IPv4Network | None:
        candidates = [s for p in self.defaults for s in p.subnets(new_prefix=self.mask)]
        start = 0
        if self.last is not None:  # the mask length is fixed here, so `last` is a candidate
            start = candidates.index(self.last) + 1
        taken = [m.net for m in self.pools.values()] + self.host
        for c in candidates[start:] + candidates[:start]:
            if not any(c.overlaps(t) for t in taken):
                return c
        return None

    def request_pool(self, net: IPv4Network | None, sub: IPv4Network | None) -> str:
        if net is None:
            net = self.next_subnet()
            if net is None:
                raise Exhausted("model")
            self.last = net
        elif str(net) not in self.pools and any(net.overlaps(m.net) for m in self.pools.values()):
            raise PoolOverlap("model")
        entry = self.pools.setdefault(str(net), ModelPool(net))
        entry.holders[str(sub) if sub else ""] = dict(SERIAL) if sub else {}
        return f"{GLOBAL}/{net}" + (f"/{sub}" if sub else "")

    def release_pool(self, pid: str) -> None:
        net, sub = parse(pid)
        entry = self.pools.get(str(net))
        if entry is not None:
            entry.holders.pop(sub, None)
            if not entry.holders:
                del self.pools[str(net)]

    # -- addresses -----------------------------------------------------------------

    def entry(self, pid: str) -> tuple[ModelPool, str]:
        net, sub = parse(pid)
        entry = self.pools.get(str(net))
        if entry is None or sub not in entry.holders:
            raise UnknownPool("model")
        return entry, sub

    def request_address(
        self, pid: str, want: IPv4Address | None, gateway: bool, serial: bool | None
    ) -> str:
        net, _ = parse(pid)
        usable = list(net.hosts())
        if want is not None and want not in usable:
            raise AddressOutOfPool("model")  # checked before the pool is looked up
        entry, sub = self.entry(pid)
        if want is not None:
            if gateway:
                entry.gateway = want
            elif want in entry.used and want == entry.gateway:
                raise AddressInUse("model")
            entry.used.add(want)
            return f"{want}/{entry.net.prefixlen}"
        if gateway and entry.gateway is not None and entry.gateway in entry.used:
            return f"{entry.gateway}/{entry.net.prefixlen}"
        allowed = [a for a in usable if not sub or a in ip_network(sub)]
        if serial is None:
            serial = entry.holders[sub].get("com.docker.network.ipam.serial") == "true"
        if serial and not gateway:
            allowed = [a for a in allowed if int(a) >= entry.cursor] + [
                a for a in allowed if int(a) < entry.cursor
            ]
        free = [a for a in allowed if a not in entry.used]
        if not free:
            raise Exhausted("model")
        got = free[0]
        entry.used.add(got)
        entry.cursor = int(got) + 1
        if gateway:
            entry.gateway = got
        return f"{got}/{entry.net.prefixlen}"

    def release_address(self, pid: str, a: IPv4Address) -> None:
        net, _ = parse(pid)
        if a not in net:
            raise AddressOutOfPool("model")
        entry = self.pools.get(str(net))
        if entry is not None and a in entry.used:
            entry.used.discard(a)
            if entry.gateway == a:
                entry.gateway = None


def parse(pid: str) -> tuple[IPv4Network, str]:
    parts = pid.split("/")
    net = ip_network(f"{parts[1]}/{parts[2]}")
    assert isinstance(net, IPv4Network)
    return net, (f"{parts[3]}/{parts[4]}" if len(parts) == 5 else "")


def outcome(call: object) -> tuple[str, str]:
    """('ok', value) or ('error', the IpamError class name)."""
    try:
        return "ok", str(call() if callable(call) else call)
    except IpamError as e:
        return "error", type(e).__name__


class Allocator(RuleBasedStateMachine):
    @initialize(
        defaults=st.lists(st.sampled_from(DEFAULT_CHOICES), min_size=1, max_size=3, unique=True),
        mask=st.integers(28, 30),
        host=st.lists(st.sampled_from(HOST_CHOICES), max_size=2, unique=True),
    )
    def start(self, defaults: list[str], mask: int, host: list[str]) -> None:
        nets = [IPv4Network(d) for d in defaults if IPv4Network(d).prefixlen <= mask]
        if not nets:
            nets = [IPv4Network("10.0.0.0/27")]
        host_nets = [IPv4Network(h) for h in host]
        self.config = IpamConfig(default_pools=tuple(nets), mask_length=mask)
        self.kv = CasKV(spurious_conflicts=1)
        self.host = host_nets
        self.svc = self.new_service()
        self.other = self.new_service()  # a second manager on the same store
        self.model = Model(nets, mask, host_nets)
        self.pids: list[str] = []

    def new_service(self) -> IpamService:
        return IpamService(
            local=self.kv,
            shared=self.kv,
            layout=LAYOUT,
            config=self.config,
            host_networks=lambda: self.host,
        )

    def agree(self, real: object, model: object) -> tuple[str, str]:
        got, want = outcome(real), outcome(model)
        assert got == want
        return got

    def pick(self, i: int) -> str | None:
        return self.pids[i % len(self.pids)] if self.pids else None

    @rule()
    def request_dynamic_pool(self) -> None:
        kind, value = self.agree(
            lambda: self.svc.request_pool(PoolRequest(GLOBAL, None)).pool_id,
            lambda: self.model.request_pool(None, None),
        )
        if kind == "ok":
            self.pids.append(value)

    @rule()
    def request_dynamic_pool_on_another_manager(self) -> None:
        kind, value = self.agree(
            lambda: self.other.request_pool(PoolRequest(GLOBAL, None)).pool_id,
            lambda: self.model.request_pool(None, None),
        )
        if kind == "ok":
            self.pids.append(value)

    @rule(net=st.sampled_from(EXPLICIT), sub_bits=st.sampled_from([0, 0, 1, 2]))
    def request_explicit_pool(self, net: IPv4Network, sub_bits: int) -> None:
        sub = (
            next(net.subnets(prefixlen_diff=sub_bits))
            if sub_bits and net.prefixlen + sub_bits <= 32
            else None
        )
        opts = dict(SERIAL) if sub else {}
        kind, value = self.agree(
            lambda: self.svc.request_pool(PoolRequest(GLOBAL, net, sub, opts)).pool_id,
            lambda: self.model.request_pool(net, sub),
        )
        if kind == "ok":
            self.pids.append(value)

    @rule(i=st.integers(0, 100))
    def release_pool(self, i: int) -> None:
        pid = self.pick(i)
        if pid is not None and i % 3 == 0:  # rarer than the other calls, so pools fill up
            self.agree(lambda: self.svc.release_pool(pid), lambda: self.model.release_pool(pid))

    ADDRESS_KINDS = st.sampled_from(
        ["first-free", "serial", "pool-default", "gateway", "explicit", "explicit-gateway"]
    )

    # Two rules for the same call: most steps of a sequence should be address calls.
    @rule(i=st.integers(0, 100), kind=ADDRESS_KINDS, offset=st.integers(0, 40))
    def request_address(self, i: int, kind: str, offset: int) -> None:
        self._request_address(i, kind, offset)

    @rule(i=st.integers(0, 100), kind=ADDRESS_KINDS, offset=st.integers(0, 40))
    def request_address_again(self, i: int, kind: str, offset: int) -> None:
        self._request_address(i, kind, offset)

    def _request_address(self, i: int, kind: str, offset: int) -> None:
        pid = self.pick(i)
        if pid is None:
            return
        net, _ = parse(pid)
        offset %= net.num_addresses + 1  # now and then one past the pool
        want = (
            IPv4Address(int(net.network_address) + offset) if kind.startswith("explicit") else None
        )
        gateway = "gateway" in kind
        serial = {"first-free": False, "serial": True}.get(kind)
        options = {
            **(GATEWAY if gateway else {}),
            **(
                {"com.docker.network.ipam.serial": str(serial).lower()}
                if serial is not None
                else {}
            ),
        }
        self.agree(
            lambda: self.svc.request_address(AddressRequest(pid, want, options)).address,
            lambda: self.model.request_address(pid, want, gateway, serial),
        )

    @rule(i=st.integers(0, 100), offset=st.integers(0, 40))
    def release_address(self, i: int, offset: int) -> None:
        pid = self.pick(i)
        if pid is None:
            return
        net, _ = parse(pid)
        a = IPv4Address(int(net.network_address) + offset % (net.num_addresses + 1))
        self.agree(
            lambda: self.svc.release_address(pid, a), lambda: self.model.release_address(pid, a)
        )

    @rule()
    def restart(self) -> None:
        self.svc = self.new_service()

    @invariant()
    def store_matches_model(self) -> None:
        if not hasattr(self, "model"):
            return
        data = self.kv.snapshot()
        raw = data.get("/swarmnet/v1/ipam/global/index")
        index = json.loads(raw)["pools"] if raw else {}
        assert set(index) == set(self.model.pools)
        nets = [ip_network(k) for k in index]
        for a in range(len(nets)):
            for b in range(a):
                assert not nets[a].overlaps(nets[b]), "two allocated pools overlap"
        for key, entry in self.model.pools.items():
            record = json.loads(data["/swarmnet/v1/ipam/global/pools/" + key.replace("/", "_")])
            used = {
                ip_address(int(entry.net.network_address) + x)
                for lo, hi in record["used"]
                for x in range(lo, hi + 1)
            }
            assert used == entry.used
            assert set(record["holders"]) == set(entry.holders)
        stray = [
            k for k in data if "/pools/" in k and k.rsplit("/", 1)[1].replace("_", "/") not in index
        ]
        assert stray == []


TestAllocator = Allocator.TestCase
TestAllocator.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
