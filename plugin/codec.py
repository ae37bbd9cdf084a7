"""The one validation point: libnetwork's JSON in, typed messages out, and back.

Docker sends no Content-Type and argument-less calls come with an empty body,
so bodies are parsed by hand. Every field we use is checked, and an error names
it; fields we do not use are ignored, because newer dockerds add some.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from core.errors import BadRequest
from core.iptypes import IPAddress, IPInterface, IPNetwork
from core.switch import OFF, switch
from driver import mac as macs
from driver import names
from driver.messages import (
    OPT_ENCRYPTED,
    OPT_MTU,
    OPT_TUNING,
    OPT_VNI,
    AllocateNetwork,
    CreateEndpoint,
    CreateNetwork,
    IPData,
    Join,
    NetworkOptions,
    NodeDiscovery,
)
from driver.vni import VNI_MAX
from ipam.messages import AddressRequest, PoolRequest

GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
NODE_DISCOVERY = 1
MIN_MTU = 576  # smallest MTU that still carries an IPv4 datagram without fragmentation rules biting

T = TypeVar("T")


# No protocol body nests deeper than a few levels; this much is already absurd.
MAX_DEPTH = 32


def _too_deep(raw: bytes) -> bool:
    """Whether brackets nest deeper than MAX_DEPTH (strings skipped), before json sees it.

    json.loads recurses per level, so "[" * 100000 would end in a RecursionError.
    """
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    if _too_deep(raw):
        raise BadRequest(f"request body nests deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"request body nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {names.cut(str(e), 200)}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


class Fields:
    """Typed access to one JSON object, with the path of each field for error messages."""

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def _name(self, key: str) -> str:
        # Keys may come from the client (AuxAddresses): quote at most a bounded part.
        if len(key) > names.QUOTE_LIMIT:
            key = key[: names.QUOTE_LIMIT] + "..."
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, kind: type[T], required: bool) -> T | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise BadRequest(f"{self._name(key)}: missing")
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadRequest(
                f"{self._name(key)}: expected {kind.__name__}, got {type(value).__name__}"
            )
        return value

    def string(self, key: str, required: bool = True) -> str:
        value = self._get(key, str, required)
        return value or ""

    def boolean(self, key: str) -> bool:
        return bool(self._get(key, bool, False))

    def integer(self, key: str) -> int:
        value = self._get(key, int, True)
        if value is None:
            raise BadRequest(f"{self._name(key)}: missing")
        return value

    def object(self, key: str, required: bool = False) -> Fields:
        return Fields(self._get(key, dict, required) or {}, self._name(key))

    def objects(self, key: str) -> list[Fields]:
        items = self._get(key, list, False) or []
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"{self._name(key)}[{i}]: expected object")
            out.append(Fields(item, f"{self._name(key)}[{i}]"))
        return out

    def str_map(self, key: str) -> Mapping[str, str]:
        """A map of strings; numbers and booleans are accepted as their JSON text."""
        raw = self._get(key, dict, False) or {}
        out: dict[str, str] = {}
        for k, v in raw.items():
            if isinstance(v, str):
                out[k] = v
            elif isinstance(v, bool):
                out[k] = "true" if v else "false"
            elif isinstance(v, (int, float)):
                out[k] = str(v)
            else:
                raise BadRequest(f"{Fields({}, self._name(key))._name(k)}: expected a string value")
        return MappingProxyType(out)

    def object_id(self, key: str) -> str:
        value = self.string(key)
        if not names.is_object_id(value):
            raise BadRequest(f"{self._name(key)}: {names.cut(value)} is not a Docker object ID")
        return value

    def network(self, key: str, required: bool = True) -> IPNetwork | None:
        value = self.string(key, required)
        if not value:
            if required:
                raise BadRequest(f"{self._name(key)}: missing")
            return None
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as e:
            raise BadRequest(
                f"{self._name(key)}: {names.cut(value)} is not a CIDR subnet ({names.cut(str(e))})"
            ) from None

    def interface(self, key: str) -> IPInterface | None:
        value = self.string(key, False)
        if not value:
            return None
        try:
            if "/" not in value:
                raise ValueError("no prefix length")
            return ipaddress.ip_interface(value)
        except ValueError:
            raise BadRequest(
                f"{self._name(key)}: {names.cut(value)} is not an address with prefix length "
                "(a.b.c.d/n)"
            ) from None

    def address(self, key: str, required: bool = False) -> IPAddress | None:
        value = self.string(key, required)
        if not value:
            if required:
                raise BadRequest(f"{self._name(key)}: missing")
            return None
        try:
            # Docker sometimes sends CIDR form where a plain address is meant.
            return ipaddress.ip_interface(value).ip
        except ValueError:
            raise BadRequest(
                f"{self._name(key)}: {names.cut(value)} is not an IP address"
            ) from None

    def required_address(self, key: str) -> IPAddress:
        value = self.address(key, required=True)
        if value is None:
            raise BadRequest(f"{self._name(key)}: missing")
        return value

    def mac(self, key: str) -> str | None:
        value = self.string(key, False)
        if not value:
            return None
        try:
            return macs.normalise(value)
        except ValueError as e:
            raise BadRequest(f"{self._name(key)}: {names.cut(str(e), 200)}") from None


# -- NetworkDriver -------------------------------------------------------------


def _ip_data(items: list[Fields]) -> tuple[IPData, ...]:
    out = []
    for f in items:
        pool = f.network("Pool")
        if pool is None:
            raise BadRequest(f"{f._name('Pool')}: missing")
        aux_f = f.object("AuxAddresses")
        aux = {name: a for name in aux_f.data if (a := aux_f.interface(name)) is not None}
        gateway = f.interface("Gateway")
        if gateway is not None:
            _check_gateway(f._name("Gateway"), gateway, pool)
        out.append(
            IPData(
                pool=pool,
                gateway=gateway,
                address_space=f.string("AddressSpace", False),
                aux_addresses=MappingProxyType(aux),
            )
        )
    return tuple(out)


def _check_gateway(name: str, gateway: IPInterface, pool: IPNetwork) -> None:
    """The bridge gets this address: refuse what the kernel would refuse, before any change."""
    ip = gateway.ip
    if ip.version != pool.version or ip not in pool:
        raise BadRequest(f"{name}: {gateway} is not inside the Pool {pool}")
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise BadRequest(f"{name}: {gateway} is not a unicast host address")


def network_id(body: dict[str, Any]) -> str:
    return Fields(body).object_id("NetworkID")


def endpoint_ids(body: dict[str, Any]) -> tuple[str, str]:
    f = Fields(body)
    return f.object_id("NetworkID"), f.object_id("EndpointID")


def _vni(value: str) -> int:
    try:
        vni = int(value, 10)
    except ValueError:
        raise BadRequest(
            f"{OPT_VNI}: {names.cut(value)} is not a VNI (an integer 1-{VNI_MAX})"
        ) from None
    if not 1 <= vni <= VNI_MAX:
        raise BadRequest(f"{OPT_VNI}: VNI {vni} is outside 1-{VNI_MAX}")
    return vni


def _mtu(value: str) -> int:
    try:
        mtu = int(value)
    except ValueError:
        raise BadRequest(f"{OPT_MTU}: {names.cut(value)} is not an integer") from None
    if not MIN_MTU <= mtu <= 65535:
        raise BadRequest(f"{OPT_MTU}: {mtu} is outside {MIN_MTU}-65535")
    return mtu


def _encrypted(options: Mapping[str, str]) -> bool:
    if OPT_ENCRYPTED not in options:
        return False
    # `--opt encrypted` arrives with an empty value; anything but an explicit "false" means yes.
    return options[OPT_ENCRYPTED].strip().lower() not in OFF


def _tuning(options: Mapping[str, str]) -> bool:
    raw = options.get(OPT_TUNING, "")
    value = switch(raw, True)
    if value is None:
        raise BadRequest(f"{OPT_TUNING}: {names.cut(raw.strip().lower())} is neither on nor off")
    return value


def network_options(options: Mapping[str, str]) -> NetworkOptions:
    """The driver options we read, checked: the VNI, the MTU, ``encrypted`` and the tuning."""
    vni, mtu = options.get(OPT_VNI), options.get(OPT_MTU)
    return NetworkOptions(
        raw=options,
        vni=_vni(vni) if vni else None,
        mtu=_mtu(mtu) if mtu else None,
        encrypted=_encrypted(options),
        tuning=_tuning(options),
    )


def allocate_network(body: dict[str, Any]) -> AllocateNetwork:
    f = Fields(body)
    return AllocateNetwork(
        network_id=f.object_id("NetworkID"),
        options=network_options(f.str_map("Options")),
        ipv4=_ip_data(f.objects("IPv4Data")),
        ipv6=_ip_data(f.objects("IPv6Data")),
    )


def _flag(options: Fields, generic: Mapping[str, str], key: str) -> bool:
    value = options.data.get(key, generic.get(key))
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, str) and value.lower() in ("true", "false", ""):
        return value.lower() == "true"
    raise BadRequest(f"Options.{key}: expected a boolean, got {names.cut(value)}")


def create_network(body: dict[str, Any]) -> CreateNetwork:
    f = Fields(body)
    options = f.object("Options")
    generic = options.str_map(GENERIC)
    return CreateNetwork(
        network_id=f.object_id("NetworkID"),
        options=network_options(generic),
        ipv4=_ip_data(f.objects("IPv4Data")),
        ipv6=_ip_data(f.objects("IPv6Data")),
        internal=_flag(options, generic, INTERNAL),
        enable_ipv6=_flag(options, generic, ENABLE_IPV6),
    )


def create_endpoint(body: dict[str, Any]) -> CreateEndpoint:
    f = Fields(body)
    iface = f.object("Interface")
    return CreateEndpoint(
        network_id=f.object_id("NetworkID"),
        endpoint_id=f.object_id("EndpointID"),
        address=iface.interface("Address"),
        address_v6=iface.interface("AddressIPv6"),
        mac=iface.mac("MacAddress"),
    )


def join(body: dict[str, Any]) -> Join:
    f = Fields(body)
    return Join(
        network_id=f.object_id("NetworkID"),
        endpoint_id=f.object_id("EndpointID"),
        sandbox_key=f.string("SandboxKey"),
    )


def discovery(body: dict[str, Any]) -> NodeDiscovery | None:
    """A node discovery, or None for discovery types we do not use."""
    f = Fields(body)
    if f.integer("DiscoveryType") != NODE_DISCOVERY:
        return None
    data = f.object("DiscoveryData", required=True)
    addr = data.required_address("Address")
    return NodeDiscovery(
        address=addr, self_node=data.boolean("Self"), bind_address=data.address("BindAddress")
    )


# -- IpamDriver -----------------------------------------------------------------


def request_pool(body: dict[str, Any]) -> PoolRequest:
    f = Fields(body)
    pool = f.network("Pool", required=False)
    sub_pool = f.network("SubPool", required=False)
    # No check of V6 against the Pool's family: swarmkit always sends V6=false,
    # even for an IPv6 --subnet. The Pool, when given, decides.
    v6 = f.boolean("V6")
    if sub_pool is not None and pool is None:
        raise BadRequest("SubPool: given without a Pool")
    return PoolRequest(
        address_space=f.string("AddressSpace", False),
        pool=pool,
        sub_pool=sub_pool,
        options=f.str_map("Options"),
        v6=v6,
    )


def pool_id(body: dict[str, Any]) -> str:
    value = Fields(body).string("PoolID")
    if not value:
        raise BadRequest("PoolID: missing")
    return value


def request_address(body: dict[str, Any]) -> AddressRequest:
    f = Fields(body)
    return AddressRequest(
        pool_id=pool_id(body), address=f.address("Address"), options=f.str_map("Options")
    )


def release_address(body: dict[str, Any]) -> tuple[str, IPAddress]:
    addr = Fields(body).required_address("Address")
    return pool_id(body), addr
