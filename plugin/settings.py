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

from core.iptypes import IPAddress
from core.switch import switch
from driver.config import (
    DEFAULT_VNI_RANGE,
    ENCRYPTED_VXLAN_PORT,
    KEY_ROTATION_INTERVAL,
    DriverConfig,
    EncryptionConfig,
)
from driver.vni import VNI_MAX

DEFAULT_SOCKET = Path("/run/docker/plugins/swarmnet.sock")
DEFAULT_STATE_DIR = Path("/var/lib/swarmnet")
DEFAULT_RUN_DIR = Path("/run/swarmnet")
# The plugin's docker-run and docker-socket mounts (config.json).
DEFAULT_SANDBOX_ROOT = "/run/docker-host"
DEFAULT_DOCKER_HOST = "unix:///run/docker-host.sock"
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
    # Watch relays (``swarmnet relay``) to follow peers through; () = watch etcd itself.
    peer_relays: tuple[str, ...] = ()
    peer_ttl: int = 15
    load_balancing: bool = True
    docker_host: str = DEFAULT_DOCKER_HOST
    # Where dockerd's exec root is seen; "" takes each SandboxKey as it is.
    sandbox_root: str = DEFAULT_SANDBOX_ROOT
    # Where the worker serves Prometheus metrics: (host, port), or None for off.
    metrics_addr: tuple[str, int] | None = None

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


def _vtep(name: str, raw: str) -> IPAddress | None:
    addr = _address(name, raw)
    if addr is not None and (
        addr.is_unspecified or addr.is_multicast or str(addr) == "255.255.255.255"
    ):
        raise SettingsError(f"{name}={raw!r}: must be a unicast address of this node")
    return addr


def _switch(name: str, raw: str, default: bool) -> bool:
    value = switch(raw, default)
    if value is None:
        raise SettingsError(f"{name}={raw!r}: must be on or off")
    return value


def _docker_host(raw: str) -> str:
    text = raw.strip() or DEFAULT_DOCKER_HOST
    if not text.startswith(("unix://", "tcp://", "http://", "https://")):
        raise SettingsError(
            f"DOCKER_HOST={raw[:100]!r}: expected unix:///path/to/docker.sock or tcp://host:port"
        )
    return text


def _metrics_addr(raw: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (an IPv6 host in brackets), or empty for off. The host is an IP address
    or ``localhost``: a name would need DNS at every start of a network plugin."""
    text = raw.strip()
    if not text:
        return None
    example = "e.g. 127.0.0.1:9474, or empty for off"
    host, sep, port_s = text.rpartition(":")
    if not sep or not host:
        raise SettingsError(f"METRICS_ADDR={raw[:100]!r}: expected HOST:PORT, {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ok = ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
    elif host == "localhost":
        ok = True
    else:
        try:
            ok = ipaddress.ip_address(host).version == 4
        except ValueError:
            ok = False
    if not ok:
        raise SettingsError(
            f"METRICS_ADDR={raw[:100]!r}: the host must be an IPv4 address, [IPv6 address] "
            f"or localhost, {example}"
        )
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise SettingsError(
            f"METRICS_ADDR={raw[:100]!r}: the port must be a number from 1 to 65535, {example}"
        )
    return host, int(port_s)


def _urls(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    urls = tuple(e.strip() for e in env.get(name, "").split(",") if e.strip())
    for e in urls:
        if not e.startswith(("http://", "https://")):
            raise SettingsError(f"{name}: {e[:100]!r} must start with http:// or https://")
    return urls


def _check_etcd_tls(
    env: Mapping[str, str], endpoints: tuple[str, ...], relays: tuple[str, ...]
) -> None:
    """TLS settings that would fail open (plain HTTP, no client certificate) stop the start.

    IPsec keys and peer records cross the etcd connection, and peer records the relays':
    an http:// endpoint or relay next to ETCD_CA/CERT/KEY would send them in clear without
    a word.
    """
    ca, cert, key = (env.get(n, "").strip() for n in ("ETCD_CA", "ETCD_CERT", "ETCD_KEY"))
    if not (ca or cert or key):
        return
    given = ", ".join(n for n, v in (("ETCD_CA", ca), ("ETCD_CERT", cert), ("ETCD_KEY", key)) if v)
    if not endpoints:
        raise SettingsError(f"{given}: set, but ETCD_ENDPOINTS is empty (no etcd to use them with)")
    for setting, urls in (("ETCD_ENDPOINTS", endpoints), ("PEER_RELAYS", relays)):
        plain = [e for e in urls if not e.startswith("https://")]
        if plain:
            raise SettingsError(
                f"{setting}: {plain[0][:100]!r} is plain http:// but {given} is set; "
                "use https:// so that keys and peer records are not sent in clear"
            )
    if bool(cert) != bool(key):
        have, missing = ("ETCD_CERT", "ETCD_KEY") if cert else ("ETCD_KEY", "ETCD_CERT")
        raise SettingsError(
            f"{missing}: empty, but {have} is set; a client certificate needs both"
        )
    for name, path in (("ETCD_CA", ca), ("ETCD_CERT", cert), ("ETCD_KEY", key)):
        if path and not os.access(path, os.R_OK):
            why = "does not exist" if not os.path.exists(path) else "is not readable"
            raise SettingsError(f"{name}={path[:200]!r}: the file {why}")


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
        data_path_addr=_vtep("DATA_PATH_ADDR", env.get("DATA_PATH_ADDR", "")),
        encryption=encryption,
    )
    endpoints = _urls(env, "ETCD_ENDPOINTS")
    relays = _urls(env, "PEER_RELAYS")
    if relays and not endpoints:
        raise SettingsError("PEER_RELAYS: set, but ETCD_ENDPOINTS is empty (relays serve an etcd)")
    _check_etcd_tls(env, endpoints, relays)
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
        peer_relays=relays,
        peer_ttl=_int(env, "PEER_TTL", 15, 3, 3600),
        load_balancing=_switch("LOAD_BALANCING", env.get("LOAD_BALANCING", ""), True),
        docker_host=_docker_host(env.get("DOCKER_HOST", "")),
        sandbox_root=env.get("SANDBOX_ROOT", DEFAULT_SANDBOX_ROOT).strip(),
        metrics_addr=_metrics_addr(env.get("METRICS_ADDR", "")),
    )
