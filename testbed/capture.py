"""tcpdump for the length of a ``with`` block, its packets read back as text lines."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Capture:
    lines: list[str]

    def esp_spis(self) -> list[int]:
        return [int(m, 16) for m in re.findall(r"ESP\(spi=(0x[0-9a-f]+)", "\n".join(self.lines))]

    def udp_to(self, port: int) -> list[str]:
        return [line for line in self.lines if re.search(rf"\.{port}: ", line)]


@contextmanager
def tcpdump(
    enter: list[str], iface: str, pcap: Path, errlog: Path, timeout: float
) -> Iterator[Capture]:
    """tcpdump on IFACE, in the namespace ENTER's command puts it in, for the block.

    The packets are read back into the Capture when the block ends.
    """
    result = Capture([])
    with errlog.open("w") as err:
        cmd = [*enter, "tcpdump", "-Z", "root", "-U", "--immediate-mode", "-nn", "-i", iface,
               "-w", str(pcap)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + timeout
        while "listening on" not in errlog.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {errlog.read_text()}")
            time.sleep(0.05)
        yield result
        time.sleep(0.3)  # let the last packets reach the file
    finally:
        proc.terminate()
        proc.wait(timeout=timeout)
    text = subprocess.run(
        ["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True, timeout=2 * timeout
    ).stdout
    result.lines.extend(text.splitlines())
