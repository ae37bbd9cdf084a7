"""NETLINK_XFRM wire format: pyroute2 message classes and the codecs for our types.

The layouts follow ``include/uapi/linux/xfrm.h``. pyroute2 packs each field on
its own, with no implicit alignment, so the C structs' padding is spelled out
as ``__pad`` fields. Encoders mirror what iproute2 sends for the same command
(tests compare against its captured bytes), including "no limit" lifetimes and
"all algorithms" template masks.

Pure functions: no sockets here. The objects built while encoding hold key
material, so they never leave this module and are never logged.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pyroute2.netlink import nla, nlmsg

from core.iptypes import IPAddress, IPNetwork
from driver.kernel.xfrm.types import (
    IPPROTO_ESP,
    Action,
    AeadKey,
    Direction,
    Mark,
    Mode,
    Policy,
    PolicyId,
    SAId,
    SecurityAssociation,
    Selector,
    Template,
)

NETLINK_XFRM = 6

# netlink core
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1

# message types (XFRM_MSG_BASE = 0x10)
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A

# attributes (enum xfrm_attr_type_t)
XFRMA_ALG_CRYPT = 2
XFRMA_TMPL = 5
XFRMA_SRCADDR = 13
XFRMA_POLICY_TYPE = 16
XFRMA_ALG_AEAD = 18
XFRMA_MARK = 21
XFRMA_ADDRESS_FILTER = 26

XFRM_POLICY_TYPE_MAIN = 0
XFRM_INF = 0xFFFFFFFFFFFFFFFF
AF_INET = 2
AF_INET6 = 10
_AF = {4: AF_INET, 6: AF_INET6}
_VERSION = {AF_INET: 4, AF_INET6: 6}

_SELECTOR_FIELDS: tuple[tuple[str, str], ...] = (
    ("sel_daddr", "16s"),
    ("sel_saddr", "16s"),
    ("sel_dport", ">H"),
    ("sel_dport_mask", ">H"),
    ("sel_sport", ">H"),
    ("sel_sport_mask", ">H"),
    ("sel_family", "H"),
    ("sel_prefixlen_d", "B"),
    ("sel_prefixlen_s", "B"),
    ("sel_proto", "B"),
    ("__pad_sel", "3x"),
    ("sel_ifindex", "i"),
    ("sel_user", "I"),
)  # struct xfrm_selector: 56 bytes

_LIFETIME_FIELDS: tuple[tuple[str, str], ...] = (
    ("lft_soft_byte_limit", "Q"),
    ("lft_hard_byte_limit", "Q"),
    ("lft_soft_packet_limit", "Q"),
    ("lft_hard_packet_limit", "Q"),
    ("lft_soft_add_expires_seconds", "Q"),
    ("lft_hard_add_expires_seconds", "Q"),
    ("lft_soft_use_expires_seconds", "Q"),
    ("lft_hard_use_expires_seconds", "Q"),
    ("cur_bytes", "Q"),
    ("cur_packets", "Q"),
    ("cur_add_time", "Q"),
    ("cur_use_time", "Q"),
)  # struct xfrm_lifetime_cfg (64) + struct xfrm_lifetime_cur (32)

_NO_LIMITS = {
    "lft_soft_byte_limit": XFRM_INF,
    "lft_hard_byte_limit": XFRM_INF,
    "lft_soft_packet_limit": XFRM_INF,
    "lft_hard_packet_limit": XFRM_INF,
}


class xfrm_mark(nla):  # type: ignore[misc]
    fields = (("v", "I"), ("m", "I"))


class xfrm_address(nla):  # type: ignore[misc]
    fields = (("addr", "16s"),)


class xfrm_address_filter(nla):  # type: ignore[misc]
    fields = (("saddr", "16s"), ("daddr", "16s"), ("family", "H"), ("splen", "B"), ("dplen", "B"))
    defaults: ClassVar[dict[str, bytes]] = {"saddr": bytes(16), "daddr": bytes(16)}


class xfrm_userpolicy_type(nla):  # type: ignore[misc]
    fields = (("type", "B"), ("__pad", "H"), ("__pad2", "B"))


class xfrm_algo_aead(nla):  # type: ignore[misc]
    """struct xfrm_algo_aead followed by the key (alg_key_len bits)."""

    fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))

    def ft_encode(self, offset: int) -> tuple[int, int]:
        offset, _ = super().ft_encode(offset)
        key: bytes = self["key"]
        self.data.extend(key)
        offset += len(key)
        pad = -offset % 4
        self.data.extend(bytes(pad))
        return offset + pad, pad

    def ft_decode(self, offset: int) -> None:
        super().ft_decode(offset)
        start = offset + 72
        self["key"] = bytes(self.data[start : start + self["alg_key_len"] // 8])


class xfrm_algo(nla):  # type: ignore[misc]
    """struct xfrm_algo with no key: used only by the null-cipher ESP probe."""

    fields = (("alg_name", "64s"), ("alg_key_len", "I"))


_TMPL = struct.Struct("=16s4sB3xH2x16sIBBB1xIII")  # struct xfrm_user_tmpl: 64 bytes


class xfrm_user_tmpls(nla):  # type: ignore[misc]
    """XFRMA_TMPL: an array of struct xfrm_user_tmpl with no per-item headers."""

    fields = ()

    def ft_encode(self, offset: int) -> tuple[int, int]:
        for t in self["templates"]:
            self.data.extend(_TMPL.pack(*t))
            offset += _TMPL.size
        return offset, 0

    def ft_decode(self, offset: int) -> None:
        end = self.offset + self.length
        items = []
        while offset + _TMPL.size <= end:
            items.append(_TMPL.unpack_from(self.data, offset))
            offset += _TMPL.size
        self["templates"] = items


_NLA_MAP = (
    (XFRMA_ALG_CRYPT, "XFRMA_ALG_CRYPT", "xfrm_algo"),
    (XFRMA_TMPL, "XFRMA_TMPL", "xfrm_user_tmpls"),
    (XFRMA_SRCADDR, "XFRMA_SRCADDR", "xfrm_address"),
    (XFRMA_POLICY_TYPE, "XFRMA_POLICY_TYPE", "xfrm_userpolicy_type"),
    (XFRMA_ALG_AEAD, "XFRMA_ALG_AEAD", "xfrm_algo_aead"),
    (XFRMA_MARK, "XFRMA_MARK", "xfrm_mark"),
    (XFRMA_ADDRESS_FILTER, "XFRMA_ADDRESS_FILTER", "xfrm_address_filter"),
)


class _xfrm_msg(nlmsg):  # type: ignore[misc]
    nla_map = _NLA_MAP
    # pyroute2 encodes a missing field as 0, which "16s" cannot take.
    defaults: ClassVar[dict[str, bytes]] = {
        name: bytes(16) for name in ("sel_daddr", "sel_saddr", "id_daddr", "saddr", "daddr")
    }
    xfrm_address_filter = xfrm_address_filter
    xfrm_algo = xfrm_algo
    xfrm_mark = xfrm_mark
    xfrm_address = xfrm_address
    xfrm_userpolicy_type = xfrm_userpolicy_type
    xfrm_algo_aead = xfrm_algo_aead
    xfrm_user_tmpls = xfrm_user_tmpls


class xfrm_usersa_info(_xfrm_msg):
    """XFRM_MSG_NEWSA / UPDSA requests and GETSA replies."""

    fields = (
        *_SELECTOR_FIELDS,
        ("id_daddr", "16s"),
        ("id_spi", ">I"),
        ("id_proto", "B"),
        ("__pad_id", "3x"),
        ("saddr", "16s"),
        *_LIFETIME_FIELDS,
        ("stats_replay_window", "I"),
        ("stats_replay", "I"),
        ("stats_integrity_failed", "I"),
        ("seq", "I"),
        ("reqid", "I"),
        ("family", "H"),
        ("mode", "B"),
        ("replay_window", "B"),
        ("flags", "B"),
        ("__pad_end", "7x"),
    )  # 224 bytes


class xfrm_usersa_id(_xfrm_msg):
    """XFRM_MSG_DELSA and XFRM_MSG_GETSA (one SA) requests."""

    fields = (
        ("daddr", "16s"),
        ("spi", ">I"),
        ("family", "H"),
        ("proto", "B"),
        ("__pad", "x"),
    )  # 24 bytes


class xfrm_userpolicy_info(_xfrm_msg):
    """XFRM_MSG_NEWPOLICY / UPDPOLICY requests and GETPOLICY replies."""

    fields = (
        *_SELECTOR_FIELDS,
        *_LIFETIME_FIELDS,
        ("priority", "I"),
        ("index", "I"),
        ("dir", "B"),
        ("action", "B"),
        ("flags", "B"),
        ("share", "B"),
        ("__pad_end", "4x"),
    )  # 168 bytes


class xfrm_userpolicy_id(_xfrm_msg):
    """XFRM_MSG_DELPOLICY and XFRM_MSG_GETPOLICY (one policy) requests."""

    fields = (*_SELECTOR_FIELDS, ("index", "I"), ("dir", "B"), ("__pad", "3x"))  # 64 bytes


class xfrm_dump(_xfrm_msg):
    """Dump requests: no fixed part, attributes right after the header."""

    fields = ()


# ---------------------------------------------------------------- helpers


def _addr_bytes(addr: IPAddress | None) -> bytes:
    return b"" if addr is None else addr.packed


def _addr16(addr: IPAddress | None) -> bytes:
    return _addr_bytes(addr).ljust(16, b"\0")


def _parse_addr(raw: bytes, family: int) -> IPAddress:
    if family == AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    if family == AF_INET6:
        return ipaddress.IPv6Address(raw[:16])
    raise ValueError(f"unknown address family {family}")


def _selector_fields(sel: Selector | None, family: int = 0) -> dict[str, Any]:
    if sel is None:
        return {"sel_family": family}
    return {
        "sel_daddr": _addr16(sel.dst.network_address),
        "sel_saddr": _addr16(sel.src.network_address),
        "sel_dport": sel.dport,
        "sel_dport_mask": 0xFFFF if sel.dport else 0,
        "sel_sport": sel.sport,
        "sel_sport_mask": 0xFFFF if sel.sport else 0,
        "sel_family": _AF[sel.version],
        "sel_prefixlen_d": sel.dst.prefixlen,
        "sel_prefixlen_s": sel.src.prefixlen,
        "sel_proto": sel.proto,
    }


def _parse_selector(msg: Any, fallback_family: int) -> Selector:
    family = msg["sel_family"] or fallback_family
    src = _parse_addr(msg["sel_saddr"], family)
    dst = _parse_addr(msg["sel_daddr"], family)
    return Selector(
        src=_network(src, msg["sel_prefixlen_s"]),
        dst=_network(dst, msg["sel_prefixlen_d"]),
        proto=msg["sel_proto"],
        dport=msg["sel_dport"] & msg["sel_dport_mask"],
        sport=msg["sel_sport"] & msg["sel_sport_mask"],
    )


def _network(addr: IPAddress, prefixlen: int) -> IPNetwork:
    return ipaddress.ip_network((addr, prefixlen), strict=False)


def _is_wildcard(sel: Selector) -> bool:
    return (
        sel.src.prefixlen == 0
        and sel.dst.prefixlen == 0
        and sel.proto == 0
        and sel.dport == 0
        and sel.sport == 0
    )


def _mark_attr(mark: Mark | None) -> list[tuple[str, dict[str, int]]]:
    if mark is None:
        return []
    return [("XFRMA_MARK", {"v": mark.value, "m": mark.mask})]


def _parse_mark(msg: Any) -> Mark | None:
    attr = msg.get_attr("XFRMA_MARK")
    if attr is None or (attr["v"] == 0 and attr["m"] == 0):
        return None
    return Mark(attr["v"], attr["m"])


def _finish(msg: Any, msg_type: int, flags: int, seq: int) -> bytes:
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


# ---------------------------------------------------------------- encoders


def encode_sa(sa: SecurityAssociation, *, update: bool = False, seq: int = 0) -> bytes:
    """XFRM_MSG_NEWSA (or UPDSA) for ``sa``. The result holds the key: send, then drop."""
    family = _AF[sa.src.version]
    msg = xfrm_usersa_info()
    msg.update(_selector_fields(sa.selector))
    msg.update(_NO_LIMITS)
    msg.update(
        id_daddr=_addr16(sa.dst),
        id_spi=sa.spi,
        id_proto=sa.proto,
        saddr=_addr16(sa.src),
        reqid=sa.reqid,
        family=family,
        mode=int(sa.mode),
        replay_window=sa.replay_window,
    )
    attrs: list[tuple[str, Any]] = []
    if sa.aead is not None:
        attrs.append(
            (
                "XFRMA_ALG_AEAD",
                {
                    "alg_name": sa.aead.name.encode(),
                    "alg_key_len": len(sa.aead.key) * 8,
                    "alg_icv_len": sa.aead.icv_bits,
                    "key": sa.aead.key,
                },
            )
        )
    attrs += _mark_attr(sa.mark)
    msg["attrs"] = attrs
    msg_type = XFRM_MSG_UPDSA if update else XFRM_MSG_NEWSA
    return _finish(msg, msg_type, NLM_F_REQUEST | NLM_F_ACK, seq)


def encode_null_esp_sa(src: IPAddress, dst: IPAddress, spi: int, reqid: int, seq: int = 0) -> bytes:
    """NEWSA for an ESP SA with the null cipher: tells "no esp4" from "no AEAD"."""
    msg = xfrm_usersa_info()
    msg.update(_NO_LIMITS)
    msg.update(
        id_daddr=_addr16(dst),
        id_spi=spi,
        id_proto=IPPROTO_ESP,
        saddr=_addr16(src),
        reqid=reqid,
        family=_AF[src.version],
        mode=int(Mode.TRANSPORT),
    )
    msg["attrs"] = [("XFRMA_ALG_CRYPT", {"alg_name": b"ecb(cipher_null)", "alg_key_len": 0})]
    return _finish(msg, XFRM_MSG_NEWSA, NLM_F_REQUEST | NLM_F_ACK, seq)


def _encode_sa_id(sa_id: SAId, msg_type: int, flags: int, seq: int) -> bytes:
    msg = xfrm_usersa_id()
    msg.update(
        daddr=_addr16(sa_id.dst),
        spi=sa_id.spi,
        family=_AF[sa_id.dst.version],
        proto=sa_id.proto,
    )
    msg["attrs"] = [("XFRMA_SRCADDR", {"addr": _addr16(sa_id.src)}), *_mark_attr(sa_id.mark)]
    return _finish(msg, msg_type, flags, seq)


def encode_sa_delete(sa_id: SAId, *, seq: int = 0) -> bytes:
    return _encode_sa_id(sa_id, XFRM_MSG_DELSA, NLM_F_REQUEST | NLM_F_ACK, seq)


def encode_sa_get(sa_id: SAId, *, seq: int = 0) -> bytes:
    """XFRM_MSG_GETSA for one SA; the kernel answers with a NEWSA message or an error."""
    return _encode_sa_id(sa_id, XFRM_MSG_GETSA, NLM_F_REQUEST, seq)


def encode_sa_dump(*, seq: int = 0) -> bytes:
    # An all-zero address filter matches everything; iproute2 always sends one.
    msg = xfrm_dump()
    msg["attrs"] = [("XFRMA_ADDRESS_FILTER", {})]
    return _finish(msg, XFRM_MSG_GETSA, NLM_F_REQUEST | NLM_F_DUMP, seq)


def _tmpl_tuple(t: Template, family: int) -> tuple[Any, ...]:
    return (
        _addr16(t.dst),
        struct.pack(">I", t.spi),
        t.proto,
        _AF[t.src.version] if t.src is not None else family,
        _addr16(t.src),
        t.reqid,
        int(t.mode),
        0,  # share: XFRM_SHARE_ANY
        int(t.optional),
        0xFFFFFFFF,  # aalgos: any
        0xFFFFFFFF,  # ealgos: any
        0xFFFFFFFF,  # calgos: any
    )


def encode_policy(policy: Policy, *, update: bool = False, seq: int = 0) -> bytes:
    """XFRM_MSG_NEWPOLICY, or UPDPOLICY (create or atomically replace)."""
    family = _AF[policy.selector.version]
    msg = xfrm_userpolicy_info()
    msg.update(_selector_fields(policy.selector))
    msg.update(_NO_LIMITS)
    msg.update(
        priority=policy.priority,
        dir=int(policy.direction),
        action=int(policy.action),
    )
    attrs: list[tuple[str, Any]] = []
    if policy.templates:
        tmpls = [_tmpl_tuple(t, family) for t in policy.templates]
        attrs.append(("XFRMA_TMPL", {"templates": tmpls}))
    attrs += _mark_attr(policy.mark)
    msg["attrs"] = attrs
    msg_type = XFRM_MSG_UPDPOLICY if update else XFRM_MSG_NEWPOLICY
    return _finish(msg, msg_type, NLM_F_REQUEST | NLM_F_ACK, seq)


def _encode_policy_id(pid: PolicyId, msg_type: int, flags: int, seq: int) -> bytes:
    msg = xfrm_userpolicy_id()
    msg.update(_selector_fields(pid.selector))
    msg.update(dir=int(pid.direction))
    msg["attrs"] = _mark_attr(pid.mark)
    return _finish(msg, msg_type, flags, seq)


def encode_policy_delete(pid: PolicyId, *, seq: int = 0) -> bytes:
    return _encode_policy_id(pid, XFRM_MSG_DELPOLICY, NLM_F_REQUEST | NLM_F_ACK, seq)


def encode_policy_get(pid: PolicyId, *, seq: int = 0) -> bytes:
    return _encode_policy_id(pid, XFRM_MSG_GETPOLICY, NLM_F_REQUEST, seq)


def encode_policy_dump(*, seq: int = 0) -> bytes:
    return _finish(xfrm_dump(), XFRM_MSG_GETPOLICY, NLM_F_REQUEST | NLM_F_DUMP, seq)


# ---------------------------------------------------------------- decoders


@dataclass(frozen=True)
class Header:
    length: int
    type: int
    flags: int
    seq: int
    pid: int


_NLMSGHDR = struct.Struct("=IHHII")
_NLMSGERR = struct.Struct("=i")


def split_messages(data: bytes) -> Iterator[tuple[Header, bytes]]:
    """Cut one netlink datagram into (header, whole message bytes) pairs."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        header = Header(*_NLMSGHDR.unpack_from(data, offset))
        if header.length < _NLMSGHDR.size or offset + header.length > len(data):
            raise ValueError(f"truncated netlink message at offset {offset}")
        yield header, data[offset : offset + header.length]
        offset += (header.length + 3) & ~3


@dataclass(frozen=True)
class NetlinkAck:
    """An NLMSG_ERROR message: ``error`` 0 is an ACK, else a negative errno."""

    error: int
    message: str = ""


def decode_error(header: Header, raw: bytes) -> NetlinkAck:
    """Decode NLMSG_ERROR, with the kernel's extended-ack text when present."""
    (error,) = _NLMSGERR.unpack_from(raw, _NLMSGHDR.size)
    offset = _NLMSGHDR.size + _NLMSGERR.size
    inner_len = _NLMSGHDR.unpack_from(raw, offset)[0] if len(raw) >= offset + 16 else 16
    # The kernel echoes the request header, and the whole request unless capped.
    offset += _NLMSGHDR.size if header.flags & NLM_F_CAPPED else (inner_len + 3) & ~3
    text = ""
    if header.flags & NLM_F_ACK_TLVS:
        while offset + 4 <= len(raw):
            length, kind = struct.unpack_from("=HH", raw, offset)
            if length < 4:
                break
            if kind & 0x3FFF == NLMSGERR_ATTR_MSG:
                text = (
                    raw[offset + 4 : offset + length].split(b"\0", 1)[0].decode("utf-8", "replace")
                )
            offset += (length + 3) & ~3
    return NetlinkAck(error, text)


def decode_done(raw: bytes) -> int:
    """The status an NLMSG_DONE carries (0, or a negative errno for a failed dump)."""
    if len(raw) >= _NLMSGHDR.size + 4:
        return int(_NLMSGERR.unpack_from(raw, _NLMSGHDR.size)[0])
    return 0


def decode_sa(raw: bytes) -> SecurityAssociation:
    """A NEWSA message (dump item or GETSA reply) as a typed SA."""
    msg = xfrm_usersa_info(raw)
    msg.decode()
    family = msg["family"]
    selector = _parse_selector(msg, family)
    aead_attr = msg.get_attr("XFRMA_ALG_AEAD")
    aead = None
    if aead_attr is not None:
        aead = AeadKey(
            key=aead_attr["key"],
            icv_bits=aead_attr["alg_icv_len"],
            name=aead_attr["alg_name"].split(b"\0", 1)[0].decode(),
        )
    return SecurityAssociation(
        src=_parse_addr(msg["saddr"], family),
        dst=_parse_addr(msg["id_daddr"], family),
        spi=msg["id_spi"],
        reqid=msg["reqid"],
        aead=aead,
        mode=Mode(msg["mode"]),
        mark=_parse_mark(msg),
        selector=None if _is_wildcard(selector) else selector,
        replay_window=msg["replay_window"],
        proto=msg["id_proto"],
    )


def _parse_template(item: tuple[Any, ...]) -> Template:
    daddr, spi_raw, proto, family, saddr, reqid, mode, _share, optional = item[:9]
    (spi,) = struct.unpack(">I", spi_raw)
    src = _parse_addr(saddr, family) if any(saddr) else None
    dst = _parse_addr(daddr, family) if any(daddr) else None
    return Template(
        reqid=reqid,
        src=src,
        dst=dst,
        spi=spi,
        proto=proto,
        mode=Mode(mode),
        optional=bool(optional),
    )


def policy_type(raw: bytes) -> int:
    """XFRM_POLICY_TYPE_MAIN (0) or SUB (1) of a NEWPOLICY message."""
    msg = xfrm_userpolicy_info(raw)
    msg.decode()
    attr = msg.get_attr("XFRMA_POLICY_TYPE")
    return XFRM_POLICY_TYPE_MAIN if attr is None else int(attr["type"])


def policy_direction(raw: bytes) -> int:
    """The raw direction; 3 and up are per-socket policies, which are not ours."""
    return int(raw[_NLMSGHDR.size + 160])


def decode_policy(raw: bytes) -> Policy:
    """A NEWPOLICY message (dump item or GETPOLICY reply) as a typed policy."""
    msg = xfrm_userpolicy_info(raw)
    msg.decode()
    tmpl_attr = msg.get_attr("XFRMA_TMPL")
    templates = tuple(_parse_template(t) for t in tmpl_attr["templates"]) if tmpl_attr else ()
    return Policy(
        selector=_parse_selector(msg, AF_INET),
        direction=Direction(msg["dir"]),
        priority=msg["priority"],
        action=Action(msg["action"]),
        templates=templates,
        mark=_parse_mark(msg),
        index=msg["index"],
    )
