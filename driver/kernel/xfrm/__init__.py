"""IPsec SAs and policies over NETLINK_XFRM: ``types`` (values), ``wire`` (bytes), ``client``
(the socket), ``probe`` (can this kernel do ESP?). The names callers use, from one place."""

from driver.kernel.nsfs import NEW_NETNS
from driver.kernel.xfrm.client import Netns, Xfrm
from driver.kernel.xfrm.probe import probe
from driver.kernel.xfrm.types import (
    AEAD_RFC4106_GCM_AES,
    IPPROTO_ESP,
    IPPROTO_UDP,
    SPI_MIN,
    Action,
    AeadKey,
    Direction,
    Mark,
    Mode,
    Policy,
    PolicyId,
    ProbeResult,
    SAId,
    SecurityAssociation,
    Selector,
    Template,
    XfrmError,
    XfrmUnsupported,
)

__all__ = [
    "AEAD_RFC4106_GCM_AES",
    "IPPROTO_ESP",
    "IPPROTO_UDP",
    "NEW_NETNS",
    "SPI_MIN",
    "Action",
    "AeadKey",
    "Direction",
    "Mark",
    "Mode",
    "Netns",
    "Policy",
    "PolicyId",
    "ProbeResult",
    "SAId",
    "SecurityAssociation",
    "Selector",
    "Template",
    "Xfrm",
    "XfrmError",
    "XfrmUnsupported",
    "probe",
]
