"""uvicorn servers for the API: a unix socket and loopback TCP by default, TLS with an
optional client-certificate requirement for remote use."""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import ssl
import struct
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from xfrmctl.config import Settings, is_loopback

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ListenError(ValueError):
    """The listen settings are unsafe or incomplete."""


def server_configs(app: FastAPI, settings: Settings) -> list[uvicorn.Config]:
    """One uvicorn config per listener; the daemon serves them on its own loop."""
    configs: list[uvicorn.Config] = []
    if settings.api_socket is not None:
        sock = bind_unix_socket(settings.api_socket, settings.api_socket_group)
        configs.append(_UnixConfig(app, sock))
    if settings.api_port is not None:
        configs.append(_tcp_config(app, settings))
    if not configs:
        raise ListenError("no listener: set api_socket or api_port")
    return configs


class PeerCredProtocol(H11Protocol):
    """HTTP on the unix socket: the ASGI `client` is `("uid:N", pid)` from the peer's
    credentials (SO_PEERCRED), so the authentication back-off applies per user."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            pid, uid, _gid = _UCRED.unpack(creds)
            self.client = (f"uid:{uid}", pid)


class _UnixConfig(uvicorn.Config):
    """Serves a unix socket bound here (uvicorn's own `uds` makes it mode 0666)."""

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        super().__init__(app, fd=sock.fileno(), http=PeerCredProtocol, log_config=None,
                         access_log=False)
        self.uds = sock.getsockname()
        self.socket = sock  # owns the descriptor uvicorn serves a duplicate of


def socket_gid(group: str | None) -> int:
    """The group id for the socket: a group name or number; -1 keeps the process's."""
    if group is None:
        return -1
    if group.isdecimal():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ListenError(f"api_socket_group {group!r}: no such group") from None


def bind_unix_socket(path: Path, group: str | None = None) -> socket.socket:
    """Bind the API's unix socket mode 0660 (group `group`) in a 0750 directory.

    The socket is bound under a umask of 0o177, so it is never reachable by others, not
    even for a moment before the chmod."""
    gid = socket_gid(group)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    if gid != -1:
        os.chown(path, -1, gid)
    os.chmod(path, 0o660)
    return sock


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
