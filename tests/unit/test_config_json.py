"""config.json, the managed plugin's manifest, agrees with the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from plugin import settings as settings_mod
from plugin.settings import from_env

ROOT = Path(__file__).resolve().parents[2]
CONFIG = json.loads((ROOT / "config.json").read_text())


def test_both_protocols_and_the_socket_are_declared() -> None:
    assert CONFIG["interface"]["types"] == ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"]
    assert CONFIG["interface"]["socket"] == settings_mod.DEFAULT_SOCKET.name
    assert CONFIG["network"]["type"] == "host"


def test_the_manifest_defaults_are_the_code_defaults() -> None:
    env = {e["name"]: e["value"] for e in CONFIG["env"]}
    assert from_env(env) == from_env({})


def test_every_setting_the_code_reads_is_settable_in_the_manifest() -> None:
    source = Path(settings_mod.__file__).read_text()
    # Settings are read as env.get("NAME", ...), _int(env, "NAME", ...) or _urls(env, "NAME").
    read = {
        a or b
        for a, b in re.findall(
            r'env\.get\(\s*"([A-Z0-9_]+)"|_(?:int|urls)\(env, "([A-Z0-9_]+)"', source
        )
    }
    # the pattern still finds them
    assert {"SCOPE", "VXLAN_PORT", "ETCD_ENDPOINTS", "PEER_RELAYS"} <= read
    settable = {e["name"] for e in CONFIG["env"] if "value" in e.get("settable", [])}
    internal = {"SOCKET", "STATE_DIR", "RUN_DIR"}  # fixed by the mounts and the socket
    assert read - internal <= settable, read - internal - settable


def test_mounts_state_and_run_have_settable_sources() -> None:
    mounts = {m["name"]: m for m in CONFIG["mounts"]}
    assert mounts["state"]["destination"] == str(settings_mod.DEFAULT_STATE_DIR)
    assert mounts["run"]["destination"] == str(settings_mod.DEFAULT_RUN_DIR)
    assert all("source" in m["settable"] for m in mounts.values())
    assert "rshared" in mounts["run"]["options"]
