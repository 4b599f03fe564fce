"""Listener settings: loopback and unix socket by default; remote only with TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from fastapi import FastAPI

from api.server import ListenError, server_configs
from xfrmctl.config import Settings


def test_default_listeners(tmp_path: Path, settings: Settings) -> None:
    conf = settings.model_copy(update={"api_socket": tmp_path / "run" / "api.sock"})
    configs = server_configs(FastAPI(), conf)
    assert [c.uds for c in configs] == [str(tmp_path / "run" / "api.sock"), None]
    assert configs[1].host == "127.0.0.1"


def test_remote_needs_tls_and_consent(settings: Settings, tmp_path: Path) -> None:
    remote = settings.model_copy(update={"api_host": "192.0.2.10"})
    with pytest.raises(ListenError, match="not loopback"):
        server_configs(FastAPI(), remote)
    with pytest.raises(ListenError, match="not loopback"):
        server_configs(FastAPI(), remote.model_copy(update={"allow_remote": True}))
    tls = remote.model_copy(update={
        "allow_remote": True, "tls_cert_file": tmp_path / "c.pem",
        "tls_key_file": tmp_path / "k.pem", "tls_client_ca_file": tmp_path / "ca.pem"})
    (config,) = server_configs(FastAPI(), tls)
    assert config.ssl_certfile == str(tmp_path / "c.pem")
    assert config.ssl_cert_reqs == ssl.CERT_REQUIRED
    with pytest.raises(ListenError, match="go together"):
        server_configs(FastAPI(), tls.model_copy(update={"tls_key_file": None}))


def test_settings_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "xfrmctl.yaml"
    config.write_text("url: http://127.0.0.1:9000\ntoken: from-file\napi_port: 9000\n")
    monkeypatch.setenv("XFRMCTL_CONFIG", str(config))
    monkeypatch.setenv("XFRMCTL_TOKEN", "from-env")
    loaded = Settings()
    assert loaded.url == "http://127.0.0.1:9000"  # file
    assert loaded.token == "from-env"  # env wins over the file
    assert loaded.api_port == 9000
    config.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="mapping"):
        Settings()
