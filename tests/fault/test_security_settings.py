"""Security settings fail closed, at start, naming the setting; the store is private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from driver.kernel.fake import FakeKernel
from plugin.app import create_app
from plugin.settings import SettingsError, from_env
from plugin.store.etcd import EtcdKV, EtcdTLS


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("not checked here, only that it can be read\n")
    return path


def refused(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as err:
        from_env(env)
    return str(err.value)


def test_tls_settings_with_an_http_endpoint_refuse_to_start(pem: Path) -> None:
    message = refused(
        {"ETCD_ENDPOINTS": "https://10.0.0.1:2379,http://10.0.0.2:2379", "ETCD_CA": str(pem)}
    )
    assert message.startswith("ETCD_ENDPOINTS:") and "http://10.0.0.2:2379" in message
    assert "ETCD_CA" in message


def test_a_certificate_without_its_key_refuses_to_start(pem: Path) -> None:
    message = refused({"ETCD_ENDPOINTS": "https://10.0.0.1:2379", "ETCD_CERT": str(pem)})
    assert message.startswith("ETCD_KEY:")
    message = refused({"ETCD_ENDPOINTS": "https://10.0.0.1:2379", "ETCD_KEY": str(pem)})
    assert message.startswith("ETCD_CERT:")


def test_a_missing_tls_file_refuses_to_start(tmp_path: Path, pem: Path) -> None:
    missing = tmp_path / "nope.pem"
    message = refused({"ETCD_ENDPOINTS": "https://10.0.0.1:2379", "ETCD_CA": str(missing)})
    assert message.startswith("ETCD_CA=") and "does not exist" in message
    env = {"ETCD_ENDPOINTS": "https://e:2379", "ETCD_CERT": str(pem), "ETCD_KEY": str(missing)}
    assert refused(env).startswith("ETCD_KEY=")
    # The adapter refuses it too, before any call, rather than an OSError at the first.
    with pytest.raises(SettingsError, match="ETCD_CA"):
        EtcdKV(["https://10.0.0.1:2379"], EtcdTLS(ca=str(missing)))


def test_tls_settings_without_endpoints_refuse_to_start(pem: Path) -> None:
    assert "ETCD_ENDPOINTS is empty" in refused({"ETCD_CA": str(pem)})


def test_complete_tls_settings_start(pem: Path) -> None:
    s = from_env(
        {
            "ETCD_ENDPOINTS": "https://10.0.0.1:2379",
            "ETCD_CA": str(pem),
            "ETCD_CERT": str(pem),
            "ETCD_KEY": str(pem),
        }
    )
    assert s.etcd_ca == str(pem)
    assert from_env({"ETCD_ENDPOINTS": "http://10.0.0.1:2379"}).etcd_endpoints


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_directory_is_0700_and_its_files_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # An older install: world-readable directory and store.
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "store.sqlite").touch(mode=0o644)
    (state / "store.sqlite").chmod(0o644)
    settings = from_env({"STATE_DIR": str(state), "SCOPE": "local"})
    app = create_app(settings, kernel=FakeKernel())
    client = app.test_client()
    body = b'{"NetworkID": "q1w2e3r4t5y6u7i8o9p0asdfg", "Options": {}}'
    assert client.post("/NetworkDriver.CreateNetwork", data=body).status_code == 200
    files = sorted(p.name for p in state.iterdir())
    assert "store.sqlite-wal" in files, files
    assert mode(state) == 0o700
    for name in files:
        assert mode(state / name) == 0o600, (name, oct(mode(state / name)))


@pytest.mark.parametrize("addr", ["224.0.0.1", "0.0.0.0", "255.255.255.255", "::"])
def test_a_data_path_addr_that_is_not_unicast_refuses_to_start(addr: str) -> None:
    assert refused({"DATA_PATH_ADDR": addr}).startswith("DATA_PATH_ADDR=")
