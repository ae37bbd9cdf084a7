"""Plugin settings: read once from the environment into a frozen dataclass.

Every setting is an env entry in config.json, so `docker plugin set` changes it.
A bad value stops the plugin at start with a message that names the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from driver.config import (
    DEFAULT_VNI_RANGE,
    ENCRYPTED_VXLAN_PORT,
    KEY_ROTATION_INTERVAL,
    DriverConfig,
    EncryptionConfig,
)
from driver.kernel.port import IPAddress
from driver.vni import VNI_MAX

DEFAULT_SOCKET = Path("/run/docker/plugins/swarmnet.sock")
DEFAULT_STATE_DIR = Path("/var/lib/swarmnet")
DEFAULT_RUN_DIR = Path("/run/swarmnet")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A setting has a value we cannot use. The message names the setting."""


@dataclass(frozen=True)
class Settings:
    socket: Path = DEFAULT_SOCKET
    state_dir: Path = DEFAULT_STATE_DIR
    run_dir: Path = DEFAULT_RUN_DIR
    log_level: str = "info"
    driver: DriverConfig = field(default_factory=DriverConfig)
    default_addr_pools: str = ""
    default_addr_pool_mask_length: str = "24"
    etcd_endpoints: tuple[str, ...] = ()
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    peer_ttl: int = 15

    @property
    def netns_dir(self) -> Path:
        return self.run_dir / "netns"

    @property
    def store_path(self) -> Path:
        return self.state_dir / "store.sqlite"


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: not an integer") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value}: must be between {lo} and {hi}")
    return value


def _vni_range(raw: str) -> tuple[int, int]:
    if not raw.strip():
        return DEFAULT_VNI_RANGE
    try:
        lo_s, hi_s = raw.split("-", 1)
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise SettingsError(f"VNI_RANGE={raw!r}: expected FIRST-LAST, e.g. 256-4095") from None
    if not 1 <= lo <= hi <= VNI_MAX:
        raise SettingsError(f"VNI_RANGE={raw!r}: need 1 <= FIRST <= LAST <= {VNI_MAX}")
    return lo, hi


_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_ROTATION_INTERVAL = 60


def _duration(name: str, raw: str, default: float) -> float:
    """Seconds, or a number with s, m, h or d. 0 turns the timer off."""
    text = raw.strip().lower()
    if not text:
        return default
    m = _DURATION.match(text)
    if m is None:
        raise SettingsError(f"{name}={raw!r}: expected seconds or a duration like 30m, 12h, 2d")
    seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if 0 < seconds < MIN_ROTATION_INTERVAL:
        raise SettingsError(
            f"{name}={raw!r}: must be 0 (off) or at least {MIN_ROTATION_INTERVAL} seconds"
        )
    return float(seconds)


def _address(name: str, raw: str) -> IPAddress | None:
    if not raw.strip():
        return None
    try:
        return ipaddress.ip_address(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: not an IP address") from None


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    scope = env.get("SCOPE", "global").strip().lower() or "global"
    if scope not in ("global", "local"):
        raise SettingsError(f"SCOPE={scope!r}: must be 'global' (swarm) or 'local' (standalone)")
    log_level = env.get("LOG_LEVEL", "info").strip().lower() or "info"
    if log_level not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL={log_level!r}: must be one of {', '.join(LOG_LEVELS)}")
    mtu_raw = env.get("MTU", "").strip()
    vxlan_port = _int(env, "VXLAN_PORT", 4789, 1, 65535)
    encrypted_port = _int(env, "ENCRYPTED_VXLAN_PORT", ENCRYPTED_VXLAN_PORT, 1, 65535)
    if encrypted_port == vxlan_port:
        raise SettingsError(
            f"ENCRYPTED_VXLAN_PORT={encrypted_port}: must differ from VXLAN_PORT, because "
            "IPsec policies tell encrypted traffic from plain traffic by this port"
        )
    encryption = EncryptionConfig(
        port=encrypted_port,
        rotation_interval=_duration(
            "KEY_ROTATION_INTERVAL", env.get("KEY_ROTATION_INTERVAL", ""), KEY_ROTATION_INTERVAL
        ),
    )
    driver = DriverConfig(
        scope=scope,
        vxlan_port=vxlan_port,
        vni_range=_vni_range(env.get("VNI_RANGE", "")),
        mtu=_int(env, "MTU", 1500, 626, 65535) if mtu_raw else None,
        data_path_addr=_address("DATA_PATH_ADDR", env.get("DATA_PATH_ADDR", "")),
        encryption=encryption,
    )
    endpoints = tuple(e.strip() for e in env.get("ETCD_ENDPOINTS", "").split(",") if e.strip())
    for e in endpoints:
        if not e.startswith(("http://", "https://")):
            raise SettingsError(f"ETCD_ENDPOINTS: {e!r} must start with http:// or https://")
    return Settings(
        socket=Path(env.get("SOCKET", "") or DEFAULT_SOCKET),
        state_dir=Path(env.get("STATE_DIR", "") or DEFAULT_STATE_DIR),
        run_dir=Path(env.get("RUN_DIR", "") or DEFAULT_RUN_DIR),
        log_level=log_level,
        driver=driver,
        default_addr_pools=env.get("DEFAULT_ADDR_POOLS", "").strip(),
        default_addr_pool_mask_length=env.get("DEFAULT_ADDR_POOL_MASK_LENGTH", "24").strip()
        or "24",
        etcd_endpoints=endpoints,
        etcd_ca=env.get("ETCD_CA", "").strip(),
        etcd_cert=env.get("ETCD_CERT", "").strip(),
        etcd_key=env.get("ETCD_KEY", "").strip(),
        peer_ttl=_int(env, "PEER_TTL", 15, 3, 3600),
    )
