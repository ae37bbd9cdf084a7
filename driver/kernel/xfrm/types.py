"""Typed values for the xfrm (IPsec) module: SAs, policies, selectors, errors.

Nothing here touches the kernel or pyroute2; ``wire`` turns these values
into NETLINK_XFRM bytes and back, and ``client`` sends them.

Key material lives only in ``AeadKey.key``. Its ``repr`` and ``str`` show the
length, never the bytes, and no error message built here mentions a key.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import ipaddress
import os
from dataclasses import dataclass, field

from core.iptypes import IPAddress, IPNetwork
from driver.kernel.port import KernelError

IPPROTO_UDP = 17
IPPROTO_ESP = 50

# Linux keeps SPIs 1-255 for IANA; 0 means "no SPI" in templates.
SPI_MIN = 0x100
U32_MAX = 0xFFFFFFFF

AEAD_RFC4106_GCM_AES = "rfc4106(gcm(aes))"
# RFC 4106 keying material is the AES key followed by a 4-byte salt.
RFC4106_SALT_BYTES = 4
RFC4106_KEY_BYTES = (16 + 4, 24 + 4, 32 + 4)
RFC4106_ICV_BITS = (64, 96, 128)
# Docker's choice (libnetwork drivers/overlay/encryption.go): AES-128 key plus
# 4-byte salt, 64-bit ICV, which is what its 26-byte MTU allowance assumes.
DEFAULT_ICV_BITS = 64


class Mode(enum.IntEnum):
    TRANSPORT = 0
    TUNNEL = 1
    ROUTEOPTIMIZATION = 2
    IN_TRIGGER = 3
    BEET = 4


class Direction(enum.IntEnum):
    IN = 0
    OUT = 1
    FWD = 2


class Action(enum.IntEnum):
    ALLOW = 0
    BLOCK = 1


class XfrmError(KernelError):
    """The kernel refused an xfrm operation.

    ``errno`` is the kernel's error number, ``what`` names the object (never a
    key), ``kernel_message`` is the kernel's extended-ack text, if it sent one.
    """

    def __init__(self, err: int, what: str, kernel_message: str = "") -> None:
        self.errno = err
        self.what = what
        self.kernel_message = kernel_message
        text = f"{what}: {os.strerror(err)}"
        if kernel_message:
            text += f" (kernel: {kernel_message})"
        super().__init__(text)


class XfrmUnsupported(XfrmError):
    """This kernel lacks something IPsec ESP with AES-GCM needs.

    ``missing`` lists the pieces by their usual names (``xfrm_user``, ``esp4``,
    ``esp6``, ``rfc4106(gcm(aes))``); the message says how to get them.
    """

    def __init__(
        self, err: int, what: str, missing: tuple[str, ...], kernel_message: str = ""
    ) -> None:
        self.missing = missing
        super().__init__(err, what, kernel_message)
        hints = "; ".join(MISSING_HINTS.get(m, m) for m in missing)
        self.args = (f"this kernel cannot do IPsec ESP: missing {hints} [{self.args[0]}]",)


MISSING_HINTS = {
    "xfrm_user": "xfrm_user (NETLINK_XFRM; CONFIG_XFRM_USER, `modprobe xfrm_user`)",
    "esp4": "esp4 (IPv4 ESP; CONFIG_INET_ESP, `modprobe esp4`)",
    "esp6": "esp6 (IPv6 ESP; CONFIG_INET6_ESP, `modprobe esp6`)",
    AEAD_RFC4106_GCM_AES: (
        "the AEAD rfc4106(gcm(aes)) (CONFIG_CRYPTO_GCM and CONFIG_CRYPTO_SEQIV, "
        "`modprobe gcm seqiv`)"
    ),
}


def is_gone(err: int) -> bool:
    """ESRCH (no such SA) and ENOENT (no such policy) mean "already deleted"."""
    return err in (errno_mod.ESRCH, errno_mod.ENOENT)


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"{name} must be a 32-bit unsigned integer, got {value}")


def _check_port(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be 0..65535, got {value}")


@dataclass(frozen=True, repr=False)
class AeadKey:
    """An AEAD algorithm with its keying material (key + salt for rfc4106)."""

    key: bytes
    icv_bits: int = DEFAULT_ICV_BITS
    name: str = AEAD_RFC4106_GCM_AES

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise TypeError("key must be bytes")
        if self.name == AEAD_RFC4106_GCM_AES:
            if len(self.key) not in RFC4106_KEY_BYTES:
                raise ValueError(
                    f"{self.name} needs a 16, 24 or 32-byte AES key plus a "
                    f"{RFC4106_SALT_BYTES}-byte salt ({RFC4106_KEY_BYTES} bytes), "
                    f"got {len(self.key)} bytes"
                )
            if self.icv_bits not in RFC4106_ICV_BITS:
                raise ValueError(
                    f"{self.name} ICV must be one of {RFC4106_ICV_BITS} bits, got {self.icv_bits}"
                )
        if len(self.name.encode()) >= 64:
            raise ValueError("AEAD algorithm name must be shorter than 64 bytes")

    def __repr__(self) -> str:
        return (
            f"AeadKey(name={self.name!r}, key=<{len(self.key)} bytes redacted>, "
            f"icv_bits={self.icv_bits})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class Mark:
    """An xfrm mark: matches packets whose ``skb->mark & mask == value``."""

    value: int
    mask: int = U32_MAX

    def __post_init__(self) -> None:
        _check_u32("mark value", self.value)
        _check_u32("mark mask", self.mask)
        if self.value & ~self.mask:
            raise ValueError(f"mark value {self.value:#x} has bits outside mask {self.mask:#x}")

    def __str__(self) -> str:
        return f"mark {self.value:#x}/{self.mask:#x}"


def host_network(addr: IPAddress) -> IPNetwork:
    """The /32 or /128 network of one address."""
    return ipaddress.ip_network(addr)


@dataclass(frozen=True)
class Selector:
    """Which packets a policy (or an SA's selector) matches.

    ``proto`` 0 means any protocol; ``sport``/``dport`` 0 means any port.
    """

    src: IPNetwork
    dst: IPNetwork
    proto: int = 0
    dport: int = 0
    sport: int = 0

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("selector src and dst must be the same IP version")
        if not 0 <= self.proto <= 255:
            raise ValueError(f"selector proto must be 0..255, got {self.proto}")
        _check_port("selector dport", self.dport)
        _check_port("selector sport", self.sport)

    @classmethod
    def hosts(
        cls, src: IPAddress, dst: IPAddress, proto: int = IPPROTO_UDP, dport: int = 0
    ) -> Selector:
        return cls(host_network(src), host_network(dst), proto, dport)

    @classmethod
    def any(cls, version: int = 4, proto: int = IPPROTO_UDP, dport: int = 0) -> Selector:
        wildcard = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
        return cls(wildcard, wildcard, proto, dport)

    @property
    def version(self) -> int:
        return self.src.version

    def __str__(self) -> str:
        text = f"{self.src}->{self.dst}"
        if self.proto:
            text += " udp" if self.proto == IPPROTO_UDP else f" proto {self.proto}"
        if self.sport:
            text += f" sport {self.sport}"
        if self.dport:
            text += f" dport {self.dport}"
        return text


@dataclass(frozen=True)
class SAId:
    """What identifies an SA to the kernel: destination, SPI, protocol (and mark)."""

    src: IPAddress
    dst: IPAddress
    spi: int
    proto: int = IPPROTO_ESP
    mark: Mark | None = None

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("SA src and dst must be the same IP version")
        _check_u32("spi", self.spi)

    def __str__(self) -> str:
        proto = "esp" if self.proto == IPPROTO_ESP else f"proto {self.proto}"
        text = f"SA {proto} spi {self.spi:#010x} {self.src}->{self.dst}"
        if self.mark is not None:
            text += f" {self.mark}"
        return text


@dataclass(frozen=True)
class SecurityAssociation:
    """One direction of an IPsec SA (``ip xfrm state``).

    ``aead`` is None only for SAs the kernel reports with another algorithm
    (not ours); we always install AEAD SAs.
    """

    src: IPAddress
    dst: IPAddress
    spi: int
    reqid: int
    aead: AeadKey | None
    mode: Mode = Mode.TRANSPORT
    mark: Mark | None = None
    selector: Selector | None = None
    # Anti-replay window in packets (legacy bitmap, at most 32). Docker leaves
    # it at 0, which turns replay protection off.
    replay_window: int = 32
    proto: int = IPPROTO_ESP

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("SA src and dst must be the same IP version")
        _check_u32("spi", self.spi)
        if self.proto == IPPROTO_ESP and self.spi < SPI_MIN:
            raise ValueError(f"ESP SPI must be at least {SPI_MIN:#x}, got {self.spi:#x}")
        _check_u32("reqid", self.reqid)
        if not 0 <= self.replay_window <= 32:
            raise ValueError(f"replay_window must be 0..32, got {self.replay_window}")
        if self.selector is not None and self.selector.version != self.src.version:
            raise ValueError("SA selector must be the same IP version as the SA")

    @property
    def id(self) -> SAId:
        return SAId(self.src, self.dst, self.spi, self.proto, self.mark)

    def __str__(self) -> str:
        return f"{self.id} reqid {self.reqid:#x}"


@dataclass(frozen=True)
class Template:
    """What a policy requires: an SA of this protocol, mode and reqid (and SPI).

    ``src``/``dst`` None is the wildcard (any address), fine for transport mode,
    where the kernel does not compare template addresses on input.
    """

    reqid: int
    src: IPAddress | None = None
    dst: IPAddress | None = None
    spi: int = 0
    proto: int = IPPROTO_ESP
    mode: Mode = Mode.TRANSPORT
    optional: bool = False

    def __post_init__(self) -> None:
        _check_u32("template reqid", self.reqid)
        _check_u32("template spi", self.spi)
        if self.src is not None and self.dst is not None and self.src.version != self.dst.version:
            raise ValueError("template src and dst must be the same IP version")


@dataclass(frozen=True)
class PolicyId:
    """What identifies a policy to the kernel: selector, direction, mark."""

    selector: Selector
    direction: Direction
    mark: Mark | None = None

    def __str__(self) -> str:
        text = f"policy {self.direction.name.lower()} {self.selector}"
        if self.mark is not None:
            text += f" {self.mark}"
        return text


@dataclass(frozen=True)
class Policy:
    """An xfrm policy (``ip xfrm policy``), main type.

    Lower ``priority`` values win. ``index`` is assigned by the kernel and
    reported by ``list``/``get``; it is ignored on add and in comparisons.
    """

    selector: Selector
    direction: Direction
    priority: int = 0
    action: Action = Action.ALLOW
    templates: tuple[Template, ...] = ()
    mark: Mark | None = None
    index: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        _check_u32("priority", self.priority)
        if self.action == Action.BLOCK and self.templates:
            raise ValueError("a block policy takes no templates")
        for t in self.templates:
            for addr in (t.src, t.dst):
                if addr is not None and addr.version != self.selector.version:
                    raise ValueError("template addresses must match the selector's IP version")

    @property
    def id(self) -> PolicyId:
        return PolicyId(self.selector, self.direction, self.mark)

    def __str__(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class ProbeResult:
    """Whether this kernel can install an ESP SA with the AEAD we use."""

    supported: bool
    missing: tuple[str, ...] = ()
    detail: str = ""
