"""Read the bytes out of the ``strace -e write=all -e read=all`` logs in ``fixtures/``.

Each traced sendmsg/sendto/recvmsg is followed by a hexdump of its buffer::

    sendmsg(4, {... nlmsg_type=XFRM_MSG_NEWSA ...}, 0) = 336
     * 336 bytes in buffer 0
     | 00000  50 01 00 00 10 00 05 00  e8 e4 07 6b 00 00 00 00  P..........k.... |

We read only the hexdump, never strace's decoding, so the bytes are exactly
what iproute2 sent and what the kernel answered.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

_CALL = re.compile(r"^(sendmsg|sendto|recvmsg|recvfrom)\(")
_HEX = re.compile(r"^ \| [0-9a-f]{5}  ((?:[0-9a-f]{2} {1,2}){1,16})")


@dataclass(frozen=True)
class Capture:
    sent: list[bytes]  # one datagram per entry
    received: list[bytes]


def load(name: str) -> Capture:
    sent: list[bytes] = []
    received: list[bytes] = []
    current: list[bytes] | None = None
    chunks: list[str] = []

    def flush() -> None:
        if current is not None and chunks:
            current.append(bytes.fromhex("".join(chunks)))
        chunks.clear()

    for line in (FIXTURES / f"{name}.strace").read_text().splitlines():
        call = _CALL.match(line)
        if call:
            flush()
            current = sent if call.group(1).startswith("send") else received
            continue
        hexline = _HEX.match(line)
        if hexline:
            chunks.append(hexline.group(1).replace(" ", ""))
    flush()
    return Capture(sent, received)


def messages(datagram: bytes) -> list[bytes]:
    """Split a datagram into its netlink messages."""
    out = []
    offset = 0
    while offset + 16 <= len(datagram):
        (length,) = struct.unpack_from("=I", datagram, offset)
        out.append(datagram[offset : offset + length])
        offset += (length + 3) & ~3
    return out


def without_seq_pid(message: bytes) -> bytes:
    """The message with nlmsg_seq and nlmsg_pid zeroed (they differ per run)."""
    return message[:8] + bytes(8) + message[16:]


def request(name: str) -> bytes:
    """The single request iproute2 sent in a capture, seq/pid zeroed."""
    cap = load(name)
    assert len(cap.sent) == 1, f"{name}: expected one request, found {len(cap.sent)}"
    return without_seq_pid(cap.sent[0])


def replies(name: str) -> list[bytes]:
    """Every message the kernel answered, in order."""
    return [m for d in load(name).received for m in messages(d)]
