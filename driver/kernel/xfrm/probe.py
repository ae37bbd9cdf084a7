"""Can this kernel do IPsec ESP with AES-GCM? Asked by installing a throwaway SA."""

from __future__ import annotations

import errno
import ipaddress
import secrets

from driver.kernel.nsfs import NEW_NETNS
from driver.kernel.xfrm.client import Netns, Xfrm
from driver.kernel.xfrm.types import (
    SPI_MIN,
    AeadKey,
    Mode,
    ProbeResult,
    SAId,
    SecurityAssociation,
    XfrmError,
    XfrmUnsupported,
)

_PROBE_SRC = ipaddress.IPv4Address("192.0.2.1")  # TEST-NET-1: never routed
_PROBE_DST = ipaddress.IPv4Address("192.0.2.2")
_PROBE_REQID = 0x70726F62  # "prob"


def _esp_type_missing(x: Xfrm) -> bool | None:
    """Whether the ESP type itself (esp4) is missing, tested with a null cipher.

    When the AEAD is missing the kernel stops at the algorithm check and never
    says whether ESP exists; a null-cipher ESP SA gets past it. None: could
    not tell (the null cipher is missing too).
    """
    spi = SPI_MIN + secrets.randbelow(0x7FFFFFFF)
    try:
        x.add_null_esp_sa(_PROBE_SRC, _PROBE_DST, spi, _PROBE_REQID)
    except XfrmError as exc:
        if exc.errno == errno.EPROTONOSUPPORT:
            return True
        return None
    x.delete_sa(SAId(_PROBE_SRC, _PROBE_DST, spi))
    return False


def probe(netns: Netns = NEW_NETNS) -> ProbeResult:
    """Can this kernel install an ESP transport SA with rfc4106(gcm(aes))?

    Installs one with a random throwaway key in a fresh network namespace
    (which vanishes with the socket, so nothing can be left behind) and
    deletes it. Without CAP_SYS_ADMIN for a new namespace it probes in the
    current one instead (or pass ``netns=None``): the SA uses TEST-NET
    addresses and a random SPI, has no policy pointing at it, and is deleted
    at once.
    """
    try:
        x = Xfrm(netns)
    except XfrmUnsupported as exc:
        return ProbeResult(False, exc.missing, str(exc))
    except XfrmError as exc:
        if not (netns is NEW_NETNS and exc.errno == errno.EPERM):
            raise
        return probe(None)  # no CAP_SYS_ADMIN for a namespace of our own
    with x:
        sa = SecurityAssociation(
            src=_PROBE_SRC,
            dst=_PROBE_DST,
            # Random, so a probe in a shared namespace never meets another's SA.
            spi=SPI_MIN + secrets.randbelow(0x7FFFFFFF),
            reqid=_PROBE_REQID,
            aead=AeadKey(secrets.token_bytes(20), 64),
            mode=Mode.TRANSPORT,
        )
        try:
            x.add_sa(sa)
        except XfrmUnsupported as exc:
            missing = list(exc.missing)
            if "esp4" not in missing and _esp_type_missing(x):
                missing.append("esp4")
            final = XfrmUnsupported(exc.errno, exc.what, tuple(missing), exc.kernel_message)
            return ProbeResult(False, final.missing, str(final))
        except XfrmError as exc:
            return ProbeResult(False, (), str(exc))
        x.delete_sa(sa.id)
    return ProbeResult(True)
