"""What every netlink family here shares: our device names, error wording, link lookups."""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from core.iptypes import IPAddress
from driver import names
from driver.kernel.port import KernelError

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
MAIN_TABLE = 254
GONE = (errno.ENOENT, errno.ENODEV)
# The link group of retired veths (ASCII "sn"). Our namespaces hold only our devices.
RETIRED_GROUP = 0x736E

HOST_PREFIX = names.veth_host("")
BRIDGE_PREFIX = names.veth_bridge("")
STAGING_PREFIX = names.vxlan_staging(0)[:-1]
VETH = re.compile(rf"^({re.escape(HOST_PREFIX)}|{re.escape(BRIDGE_PREFIX)})([0-9a-f]{{12}})$")
STAGING = re.compile(rf"^{re.escape(STAGING_PREFIX)}[0-9]+$")

Handle = Any  # a pyroute2 IPRoute; pyroute2 ships no type information
Msg = Any  # a pyroute2 netlink message


@contextmanager
def errors(what: str) -> Iterator[None]:
    """Turn netlink and OS errors into KernelError naming the object."""
    try:
        yield
    except KernelError:
        raise
    except NetlinkError as exc:
        raise KernelError(f"{what}: {os.strerror(exc.code)} (errno {exc.code})") from exc
    except OSError as exc:
        code = exc.errno or 0
        raise KernelError(f"{what}: {os.strerror(code) if code else exc}") from exc


def family_of(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def link_kind(link: Msg) -> str | None:
    kind = link.get(("linkinfo", "kind"))
    return str(kind) if kind is not None else None


def get_link(ipr: Handle, name: str) -> Msg | None:
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code in GONE:
            return None
        raise


def must_link(ipr: Handle, name: str) -> Msg:
    """A link we have just created or moved; its absence is a kernel surprise worth reporting."""
    link = get_link(ipr, name)
    if link is None:
        raise KernelError(f"{name} is missing right after it was created")
    return link


def get_link_by_index(ipr: Handle, index: int) -> Msg | None:
    try:
        return ipr.link("get", index=index)[0]
    except NetlinkError as exc:
        if exc.code in GONE:
            return None
        raise


def delete_link(ipr: Handle, index: int) -> bool:
    """Delete a link; False if it was already gone."""
    try:
        ipr.link("del", index=index)
        return True
    except NetlinkError as exc:
        if exc.code in GONE:
            return False
        raise


def delete_quietly(ipr: Handle, index: int) -> None:
    """Undo step: best effort, the original error is the one worth reporting."""
    with suppress(NetlinkError, OSError):
        delete_link(ipr, index)


def ignore_gone(fn: Callable[[], object]) -> None:
    try:
        fn()
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise


def set_up(ipr: Handle, name: str, what: str) -> None:
    with errors(what):
        link = get_link(ipr, name)
        if link is None:
            raise KernelError(f"{what}: missing")
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=link["index"], state="up")

