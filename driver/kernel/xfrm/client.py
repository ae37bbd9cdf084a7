"""The NETLINK_XFRM client: IPsec SAs and policies, typed, in any network namespace.

pyroute2 has no xfrm SA/policy API, only the xfrm *link* kind, so this package
builds the messages on pyroute2's netlink message classes (``wire``) and
talks to the kernel over a plain blocking NETLINK_XFRM socket. We do not use
pyroute2's socket classes: in 0.9 they run an asyncio loop, and their netns
support forks a helper process and creates a namespace that does not exist.
A synchronous request/ack loop is all xfrm needs.

Usage::

    with Xfrm("/run/netns/host1") as x:          # or a name under /run/netns, an fd, None
        x.ensure_sa(sa_in)                        # NEWSA; identical SA already there: no-op
        x.update_policy(out_policy)               # UPDPOLICY: create or replace atomically
        x.delete_sa(sa_old.id)                    # False if it was already gone

Every failure raises ``XfrmError`` (``XfrmUnsupported`` when the kernel lacks
ESP, the AEAD or xfrm_user); nothing is only logged. Messages name the SA or
policy and never contain key material; the socket sets NETLINK_CAP_ACK so the
kernel does not even echo a rejected request (and its key) back to us.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

from core.iptypes import IPAddress
from driver.kernel import nsfs
from driver.kernel.nsfs import NEW_NETNS
from driver.kernel.xfrm import wire
from driver.kernel.xfrm.types import (
    AEAD_RFC4106_GCM_AES,
    IPPROTO_ESP,
    Direction,
    Policy,
    PolicyId,
    SAId,
    SecurityAssociation,
    XfrmError,
    XfrmUnsupported,
    is_gone,
)

NETNS_RUN_DIR = "/run/netns"
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

# None: the caller's namespace; a path, a name under /run/netns, an fd, or NEW_NETNS.
Netns = str | os.PathLike[str] | int | nsfs.NewNetns | None


def _in_netns(netns: Netns, make: Callable[[], socket.socket]) -> socket.socket:
    """Run ``make`` in ``netns`` (``nsfs.run_in``); a failure to get there is an XfrmError."""
    if netns is None:
        return make()
    opened = -1
    target: int | nsfs.NewNetns
    if isinstance(netns, (str, os.PathLike)):
        path = os.fspath(netns)
        path = path if "/" in path else os.path.join(NETNS_RUN_DIR, path)
        try:
            opened = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise XfrmError(exc.errno or errno.ENOENT, f"opening network namespace {path}") from exc
        target = opened
    else:
        target = netns
    try:
        return nsfs.run_in(target, make)
    except XfrmError:
        raise
    except OSError as exc:  # make() raises only XfrmErrors: this is setns or unshare
        where = "a new network namespace" if netns is NEW_NETNS else f"network namespace {netns!r}"
        raise XfrmError(exc.errno or errno.EIO, f"entering {where}") from exc
    finally:
        if opened >= 0:
            os.close(opened)


def _open_xfrm_socket() -> socket.socket:
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, wire.NETLINK_XFRM
        )
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            raise XfrmUnsupported(
                exc.errno, "opening a NETLINK_XFRM socket", ("xfrm_user",)
            ) from exc
        raise XfrmError(exc.errno or errno.EIO, "opening a NETLINK_XFRM socket") from exc
    try:
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    except OSError as exc:
        sock.close()
        raise XfrmError(exc.errno or errno.EIO, "setting up the NETLINK_XFRM socket") from exc
    return sock


def _unsupported_on_add(exc: XfrmError, sa: SecurityAssociation) -> XfrmError:
    """Turn the kernel's "I cannot do this" answers to NEWSA/UPDSA into XfrmUnsupported.

    Measured, not guessed (see docs/encryption-kernel.md): ENOSYS "Requested
    AEAD algorithm not found" when the crypto is missing (this development
    host, whose kernel has neither ESP nor GCM, stops here), EPROTONOSUPPORT
    "Requested type not found" when esp4/esp6 is missing, ENOENT when the
    kernel finds the AEAD but cannot instantiate it (a template module such as
    seqiv fails to load).
    """
    aead = sa.aead.name if sa.aead is not None else AEAD_RFC4106_GCM_AES
    esp = "esp4" if sa.src.version == 4 else "esp6"
    missing = {
        errno.ENOSYS: (aead,),
        errno.ENOENT: (aead,),
        errno.EPROTONOSUPPORT: (esp,),
    }.get(exc.errno)
    if missing is None or sa.proto != IPPROTO_ESP:
        return exc
    return XfrmUnsupported(exc.errno, exc.what, missing, exc.kernel_message)


class Xfrm:
    """A NETLINK_XFRM connection to one network namespace.

    ``netns``: None for the caller's namespace; a path (``/run/netns/x``,
    ``/proc/<pid>/ns/net``); a bare name, looked up under /run/netns; an open
    namespace fd (left open); or ``NEW_NETNS`` for a throwaway namespace that
    disappears when this object is closed. Thread-safe: one request at a time.
    """

    def __init__(self, netns: Netns = None, *, timeout: float = 10.0) -> None:
        self._sock = _in_netns(netns, _open_xfrm_socket)
        self._sock.settimeout(timeout)
        self._lock = threading.Lock()
        self._seq = secrets.randbelow(1 << 30)
        self.netns = netns

    @classmethod
    def _with_socket(cls, sock: socket.socket) -> Xfrm:
        """An Xfrm over an already open socket (unit tests replay kernel answers)."""
        self = cls.__new__(cls)
        self._sock = sock
        self._lock = threading.Lock()
        self._seq = 0
        self.netns = None
        return self

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Xfrm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _recv(self, what: str) -> bytes:
        peek = bytearray(1)
        try:
            size = self._sock.recv_into(peek, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            return self._sock.recv(max(size, 1))
        except TimeoutError as exc:
            raise XfrmError(errno.ETIMEDOUT, what, "no answer from the kernel") from exc
        except OSError as exc:
            raise XfrmError(exc.errno or errno.EIO, what) from exc

    def _transact(self, encode: Callable[[int], bytes], what: str) -> list[bytes]:
        """Send one request; return the reply messages (dump items or the GET answer).

        Acked requests return [] on success. Errors raise XfrmError.
        """
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            seq = self._seq
            request = encode(seq)
            flags = struct.unpack_from("=H", request, 6)[0]
            try:
                self._sock.send(request)
            except OSError as exc:
                raise XfrmError(exc.errno or errno.EIO, what) from exc
            finally:
                del request  # may hold a key
            dump = flags & wire.NLM_F_DUMP == wire.NLM_F_DUMP
            items: list[bytes] = []
            interrupted = False
            while True:
                for header, raw in wire.split_messages(self._recv(what)):
                    if header.seq != seq:
                        continue  # a late answer to an earlier, abandoned request
                    if header.flags & wire.NLM_F_DUMP_INTR:
                        interrupted = True
                    if header.type == wire.NLMSG_ERROR:
                        ack = wire.decode_error(header, raw)
                        if ack.error:
                            raise XfrmError(-ack.error, what, ack.message)
                        return items
                    if header.type == wire.NLMSG_DONE:
                        status = wire.decode_done(raw)
                        if status:
                            raise XfrmError(-status, what)
                        if interrupted:
                            raise _DumpInterrupted
                        return items
                    if header.type == wire.NLMSG_NOOP:
                        continue
                    items.append(raw)
                    if not dump and not flags & wire.NLM_F_ACK:
                        return items

    def _dump(self, encode: Callable[[int], bytes], what: str) -> list[bytes]:
        # The kernel flags a dump that raced with a change; such a dump may
        # miss or repeat entries, so take it again.
        for _ in range(10):
            try:
                return self._transact(encode, what)
            except _DumpInterrupted:
                continue
        raise XfrmError(errno.EAGAIN, what, "dump kept being interrupted by concurrent changes")

    # ------------------------------------------------------------ SAs

    def add_sa(self, sa: SecurityAssociation) -> None:
        """XFRM_MSG_NEWSA. Raises XfrmError(EEXIST) if an SA with this id exists."""
        self._write_sa(sa, update=False)

    def update_sa(self, sa: SecurityAssociation) -> None:
        """XFRM_MSG_UPDSA: changes an existing SA (ESRCH if there is none).

        The kernel updates only the selector, lifetimes and a few other fields;
        it keeps the old key and algorithm. Rotate keys with new SPIs instead.
        """
        self._write_sa(sa, update=True)

    def _write_sa(self, sa: SecurityAssociation, *, update: bool) -> None:
        what = f"{'updating' if update else 'adding'} {sa}"
        try:
            self._transact(lambda seq: wire.encode_sa(sa, update=update, seq=seq), what)
        except XfrmError as exc:
            raise _unsupported_on_add(exc, sa) from None

    def ensure_sa(self, sa: SecurityAssociation) -> bool:
        """Install ``sa`` unless the identical SA is there. True if it was added.

        An SA with the same id but another key, reqid, mark or selector is a
        conflict (XfrmError EEXIST): replacing it in place would open a window.
        """
        try:
            self.add_sa(sa)
            return True
        except XfrmError as exc:
            if exc.errno != errno.EEXIST:
                raise
        current = self.get_sa(sa.id)
        if current == sa:
            return False
        if current is None:  # deleted in between: try once more
            self.add_sa(sa)
            return True
        raise XfrmError(
            errno.EEXIST, f"adding {sa}", "an SA with this SPI exists with other parameters"
        )

    def add_null_esp_sa(self, src: IPAddress, dst: IPAddress, spi: int, reqid: int) -> None:
        """An ESP SA with the null cipher: only the probe asks, to tell whether ESP exists."""
        self._transact(
            lambda seq: wire.encode_null_esp_sa(src, dst, spi, reqid, seq),
            "probing ESP with a null cipher",
        )

    def get_sa(self, sa_id: SAId) -> SecurityAssociation | None:
        what = f"reading {sa_id}"
        try:
            items = self._transact(lambda seq: wire.encode_sa_get(sa_id, seq=seq), what)
        except XfrmError as exc:
            if is_gone(exc.errno):
                return None
            raise
        return wire.decode_sa(items[0]) if items else None

    def delete_sa(self, sa_id: SAId) -> bool:
        """XFRM_MSG_DELSA. False if the SA was already gone (ESRCH)."""
        try:
            self._transact(lambda seq: wire.encode_sa_delete(sa_id, seq=seq), f"deleting {sa_id}")
            return True
        except XfrmError as exc:
            if is_gone(exc.errno):
                return False
            raise

    def list_sas(self) -> list[SecurityAssociation]:
        """Every SA this module can represent.

        SAs of kinds we never create (modes newer than BEET, ESP SPIs below
        0x100) are left out rather than failing the whole listing.
        """
        items = self._dump(lambda seq: wire.encode_sa_dump(seq=seq), "listing SAs")
        return [sa for sa in map(_decoded_sa, items) if sa is not None]

    def flush_sas(self, match: Callable[[SecurityAssociation], bool]) -> list[SAId]:
        """Delete every SA ``match`` accepts (ours, by reqid or mark). Returns their ids."""
        deleted = []
        for sa in self.list_sas():
            if match(sa) and self.delete_sa(sa.id):
                deleted.append(sa.id)
        return deleted

    # ------------------------------------------------------------ policies

    def add_policy(self, policy: Policy) -> None:
        """XFRM_MSG_NEWPOLICY. Raises XfrmError(EEXIST) if the policy id exists."""
        self._transact(lambda seq: wire.encode_policy(policy, seq=seq), f"adding {policy}")

    def update_policy(self, policy: Policy) -> None:
        """XFRM_MSG_UPDPOLICY: create, or replace in one step (no gap in between)."""
        self._transact(
            lambda seq: wire.encode_policy(policy, update=True, seq=seq), f"updating {policy}"
        )

    def ensure_policy(self, policy: Policy) -> bool:
        """Make the policy exactly ``policy``. True if the kernel was changed."""
        if self.get_policy(policy.id) == policy:
            return False
        self.update_policy(policy)
        return True

    def get_policy(self, pid: PolicyId) -> Policy | None:
        what = f"reading {pid}"
        try:
            items = self._transact(lambda seq: wire.encode_policy_get(pid, seq=seq), what)
        except XfrmError as exc:
            if is_gone(exc.errno):
                return None
            raise
        return wire.decode_policy(items[0]) if items else None

    def delete_policy(self, pid: PolicyId) -> bool:
        """XFRM_MSG_DELPOLICY. False if the policy was already gone (ENOENT)."""
        try:
            self._transact(lambda seq: wire.encode_policy_delete(pid, seq=seq), f"deleting {pid}")
            return True
        except XfrmError as exc:
            if is_gone(exc.errno):
                return False
            raise

    def list_policies(self) -> list[Policy]:
        """Main-type, non-socket policies (the only kind this module writes)."""
        items = self._dump(lambda seq: wire.encode_policy_dump(seq=seq), "listing policies")
        policies = (
            _decoded_policy(raw)
            for raw in items
            if wire.policy_direction(raw) <= Direction.FWD
            and wire.policy_type(raw) == wire.XFRM_POLICY_TYPE_MAIN
        )
        return [p for p in policies if p is not None]

    def flush_policies(self, match: Callable[[Policy], bool]) -> list[PolicyId]:
        """Delete every policy ``match`` accepts. Returns their ids."""
        deleted = []
        for policy in self.list_policies():
            if match(policy) and self.delete_policy(policy.id):
                deleted.append(policy.id)
        return deleted


class _DumpInterrupted(Exception):
    pass


def _decoded_sa(raw: bytes) -> SecurityAssociation | None:
    try:
        return wire.decode_sa(raw)
    except ValueError:  # not a kind of SA we create: not ours
        return None


def _decoded_policy(raw: bytes) -> Policy | None:
    try:
        return wire.decode_policy(raw)
    except ValueError:  # e.g. a template mode we never use: not ours
        return None
