"""uvicorn servers for the API: a unix socket and loopback TCP by default, TLS with an
optional client-certificate requirement for remote use."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from xfrmctl.config import Settings, is_loopback


class ListenError(ValueError):
    """The listen settings are unsafe or incomplete."""


def server_configs(app: FastAPI, settings: Settings) -> list[uvicorn.Config]:
    """One uvicorn config per listener; the daemon serves them on its own loop."""
    configs: list[uvicorn.Config] = []
    if settings.api_socket is not None:
        _prepare_socket(settings.api_socket)
        configs.append(uvicorn.Config(app, uds=str(settings.api_socket), log_config=None,
                                      access_log=False))
    if settings.api_port is not None:
        configs.append(_tcp_config(app, settings))
    if not configs:
        raise ListenError("no listener: set api_socket or api_port")
    return configs


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    if path.is_socket():
        path.unlink()


def _tcp_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    tls = settings.tls_cert_file is not None
    if not is_loopback(settings.api_host) and not (settings.allow_remote and tls):
        raise ListenError(f"api_host {settings.api_host} is not loopback: set allow_remote "
                          "and TLS (tls_cert_file, tls_key_file) to listen remotely")
    if tls != (settings.tls_key_file is not None):
        raise ListenError("tls_cert_file and tls_key_file go together")
    options: dict[str, object] = {}
    if tls:
        options = {"ssl_certfile": str(settings.tls_cert_file),
                   "ssl_keyfile": str(settings.tls_key_file)}
        if settings.tls_client_ca_file is not None:
            options |= {"ssl_ca_certs": str(settings.tls_client_ca_file),
                        "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return uvicorn.Config(app, host=settings.api_host, port=settings.api_port or 0,
                          log_config=None, access_log=False, **options)  # type: ignore[arg-type]


async def serve(app: FastAPI, settings: Settings) -> None:
    """Serve every listener until cancelled (for a standalone API without the daemon)."""
    servers = [uvicorn.Server(c) for c in server_configs(app, settings)]
    try:
        await asyncio.gather(*(s.serve() for s in servers))
    finally:
        if settings.api_socket is not None and os.path.exists(settings.api_socket):
            os.unlink(settings.api_socket)
