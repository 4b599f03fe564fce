"""Settings: environment variables XFRMCTL_*, then an optional YAML file, then defaults.

The file is named by XFRMCTL_CONFIG (default /etc/xfrmctl/xfrmctl.yaml, read only if it
exists). Daemon and CLI share this module; the CLI only reads `url`, `token` and TLS.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_CONFIG_FILE = Path("/etc/xfrmctl/xfrmctl.yaml")
DEFAULT_SOCKET = Path("/run/xfrmctl/api.sock")


class SettingsError(ValueError):
    """A setting (environment XFRMCTL_* or the YAML file) holds a value that cannot be
    used; the message names each setting and says what it must be."""


class _YamlSource(PydanticBaseSettingsSource):
    """Top-level keys of the YAML file named by XFRMCTL_CONFIG, if the file exists."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = Path(os.environ.get("XFRMCTL_CONFIG", str(DEFAULT_CONFIG_FILE)))
        self._data: dict[str, Any] = {}
        if path.is_file():
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark else ""
                problem = getattr(exc, "problem", None) or "a syntax error"
                raise SettingsError(f"{path}: not valid YAML{where}: {problem}") from None
            if not isinstance(loaded, dict):
                raise SettingsError(f"{path}: expected a mapping at the top level")
            self._data = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    """Daemon, API and CLI settings."""

    model_config = SettingsConfigDict(env_prefix="XFRMCTL_", extra="ignore")

    # Database and secrets at rest.
    database_url: str = "sqlite:////var/lib/xfrmctl/xfrmctl.db"
    secret_key_file: Path = Path("/var/lib/xfrmctl/secret.key")

    # A fleet of gateways on one (PostgreSQL) database: this daemon's name (default: the
    # host name), how often it heartbeats (seconds; unreachable after 3 missed).
    gateway_name: str | None = Field(default=None, min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    heartbeat_interval: int = Field(default=5, ge=1, le=3600)

    # API listeners: a unix socket and loopback TCP by default.
    api_socket: Path | None = DEFAULT_SOCKET
    api_host: str = "127.0.0.1"
    api_port: int | None = Field(default=8463, ge=1, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None  # set: clients must present a certificate
    allow_remote: bool = False  # api_host may be a non-loopback address only if set
    # The unix socket is mode 0660; this group (name or number) may use it besides root.
    api_socket_group: str | None = None
    # Failed authentications: per-client exponential back-off (seconds), capped.
    auth_backoff_max: float = Field(default=30.0, ge=0)

    # CLI client side.
    url: str = f"unix://{DEFAULT_SOCKET}"
    token: str | None = None
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    # Lists returned by the API.
    page_limit_max: int = Field(default=500, ge=1)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    @field_validator("api_host")
    @classmethod
    def _host_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("api_host must not be empty")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


def _describe(exc: ValidationError) -> str:
    """One clause per bad setting, naming its variable and the file; never the value
    (a setting may be a secret)."""
    source = os.environ.get("XFRMCTL_CONFIG", str(DEFAULT_CONFIG_FILE))
    clauses = []
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]) if error["loc"] else "settings"
        clauses.append(f"XFRMCTL_{name.upper()} (or `{name}` in {source}): {error['msg']}")
    return "bad setting: " + "; ".join(clauses)


def is_loopback(host: str) -> bool:
    """True only for a loopback IP address (127.0.0.0/8, ::1) or `localhost`; a name
    such as `127.evil.example` is not resolved and does not count."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
