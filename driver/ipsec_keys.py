"""IPsec keys and SPIs that every node derives alike, without negotiating.

Pure values and arithmetic; the store access is in ``driver.ipsec_store``.

* A *generation* is a 32-byte master secret from ``secrets``, numbered 1, 2, ...
  The key ring (shared store) holds the newest few.
* Each node claims a 12-bit *index* once (by VTEP address).
* ``spi(g, src, dst)`` packs the generation and both indexes, so it is unique
  among everything one host receives (see docs/encryption-kernel.md):
  ``((g mod 255) + 1) << 24 | index(src) << 12 | index(dst)``.
* ``derive_key`` gives each (ordered pair, generation) its own AES-128 key and
  salt: HKDF-SHA256 of the master, bound to both addresses and the SPI.

Master secrets and derived keys are never part of a repr, a log line or an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from core.iptypes import IPAddress

REQID = 0x534E01  # "SN": marks every SA and template of ours
MASTER_BYTES = 32
KEY_BYTES = 20  # AES-128 key + 4-byte RFC 4106 salt, as Docker
ICV_BITS = 64  # as Docker; the MTU allowance below assumes it
INDEX_MIN, INDEX_MAX = 1, 0xFFF
GENERATIONS_KEPT = 3  # the newest, the one before (rotation in flight), one spare
INFO = b"swarmnet esp v1"
# ESP transport with rfc4106(gcm(aes)), 64-bit ICV: SPI 4 + seq 4 + IV 8 +
# pad length 1 + next header 1 + ICV 8 (libnetwork's pktExpansion).
ESP_OVERHEAD = 26


def hkdf_sha256(ikm: bytes, info: bytes, length: int, salt: bytes = b"") -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    if not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF length must be 1..{255 * 32}, got {length}")
    prk = hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def generation_byte(generation: int) -> int:
    """The SPI's top byte for a generation: 1..255, never 0."""
    if generation < 1:
        raise ValueError(f"generations start at 1, got {generation}")
    return (generation % 255) + 1


def spi(generation: int, src_index: int, dst_index: int) -> int:
    for name, index in (("source", src_index), ("destination", dst_index)):
        if not INDEX_MIN <= index <= INDEX_MAX:
            raise ValueError(f"{name} node index must be {INDEX_MIN}..{INDEX_MAX}, got {index}")
    return generation_byte(generation) << 24 | src_index << 12 | dst_index


def spi_parts(value: int) -> tuple[int, int, int]:
    """(generation byte, source index, destination index) of an SPI made by ``spi``."""
    return value >> 24, (value >> 12) & 0xFFF, value & 0xFFF


def derive_key(master: bytes, src: IPAddress, dst: IPAddress, spi_value: int) -> bytes:
    """The 20-byte keying material of the SA src -> dst with this SPI."""
    info = INFO + src.packed + dst.packed + spi_value.to_bytes(4, "big")
    return hkdf_sha256(master, info, KEY_BYTES)


def encrypted_mtu(underlay_mtu: int, vxlan_overhead: int) -> int:
    """Docker's rule: minus VXLAN, minus the ESP expansion, rounded down to a multiple of 4."""
    mtu = underlay_mtu - vxlan_overhead - ESP_OVERHEAD
    return mtu - mtu % 4


@dataclass(frozen=True, repr=False)
class Generation:
    number: int
    master: bytes
    created: float  # Unix time, seconds; every node reads it to decide interval rotation

    def __post_init__(self) -> None:
        if self.number < 1:
            raise ValueError(f"generation numbers start at 1, got {self.number}")
        if len(self.master) != MASTER_BYTES:
            raise ValueError(f"a master secret is {MASTER_BYTES} bytes")

    def __repr__(self) -> str:
        return f"Generation({self.number}, created={self.created:.0f}, master=<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class KeyRing:
    """The live generations, oldest first. The newest is what senders move to."""

    generations: tuple[Generation, ...]

    def __post_init__(self) -> None:
        numbers = [g.number for g in self.generations]
        if not numbers:
            raise ValueError("a key ring holds at least one generation")
        if numbers != sorted(set(numbers)):
            raise ValueError("key ring generations must be distinct and ascending")
        if numbers[-1] - numbers[0] >= 255:
            raise ValueError("live generations must span fewer than 255 numbers (SPI byte)")

    @property
    def newest(self) -> Generation:
        return self.generations[-1]

    def get(self, number: int) -> Generation | None:
        return next((g for g in self.generations if g.number == number), None)

    def by_spi_byte(self, byte: int) -> Generation | None:
        return next((g for g in self.generations if generation_byte(g.number) == byte), None)

    def chosen(self, acknowledged: int | None) -> int:
        """The generation to send with to a node that has inbound SAs up to ``acknowledged``.

        The newest live generation it acknowledged; the newest overall if it
        acknowledged none that is still live (a new node installs the newest first).
        """
        if acknowledged is not None:
            fitting = [g.number for g in self.generations if g.number <= acknowledged]
            if fitting:
                return fitting[-1]
        return self.newest.number

    def rotated(self, master: bytes, now: float) -> KeyRing:
        """A new newest generation; the oldest beyond GENERATIONS_KEPT drop out."""
        new = Generation(self.newest.number + 1, master, now)
        return KeyRing((*self.generations, new)[-GENERATIONS_KEPT:])

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "generations": [
                    {
                        "number": g.number,
                        "master": base64.b64encode(g.master).decode(),
                        "created": g.created,
                    }
                    for g in self.generations
                ]
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> KeyRing:
        d: dict[str, Any] = json.loads(raw)
        return cls(
            tuple(
                Generation(int(g["number"]), base64.b64decode(g["master"]), float(g["created"]))
                for g in d["generations"]
            )
        )


def claim_index(raw: bytes | None, vtep: str) -> bytes:
    """The node index table with ``vtep`` in it (the lowest free index if it was missing).

    Pure, for ``KV.update``. Raises ValueError when all 4095 are taken.
    """
    table = load_indexes(raw)
    if vtep in table:
        return raw if raw is not None else json.dumps(table, sort_keys=True).encode()
    used = set(table.values())
    free = next((i for i in range(INDEX_MIN, INDEX_MAX + 1) if i not in used), None)
    if free is None:
        raise ValueError(f"all {INDEX_MAX} IPsec node indexes are taken")
    return json.dumps({**table, vtep: free}, sort_keys=True).encode()


def load_indexes(raw: bytes | None) -> dict[str, int]:
    if raw is None:
        return {}
    return {str(k): int(v) for k, v in json.loads(raw).items()}


@dataclass(frozen=True)
class Ack:
    """What one node reports, so that others know when to switch and to prune.

    ``inbound``: the newest generation whose inbound SAs it has for all its peers.
    ``outbound``: per peer VTEP, the generation its out policy pins now.
    """

    inbound: int | None = None
    outbound: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> bytes:
        return json.dumps(
            {"inbound": self.inbound, "outbound": dict(self.outbound)}, sort_keys=True
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Ack:
        d: dict[str, Any] = json.loads(raw)
        inbound = d.get("inbound")
        return cls(
            inbound=None if inbound is None else int(inbound),
            outbound=MappingProxyType({str(k): int(v) for k, v in d.get("outbound", {}).items()}),
        )

    def same(self, other: Ack | None) -> bool:
        return (
            other is not None
            and other.inbound == self.inbound
            and dict(other.outbound) == dict(self.outbound)
        )
