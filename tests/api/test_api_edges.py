"""The API's edges: loopback only by address, private files and socket, the back-off for
failed authentication, and authentication before the body is read."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.server import ListenError, server_configs
from api.throttle import AuthThrottle
from tests.support.api_app import make_token
from xfrmctl.config import Settings, is_loopback
from xfrmctl.store.db import Database
from xfrmctl.store.tokens import Scope


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("127.evil.example", False), ("127.0.0.1.nip.io", False),
    ("192.0.2.1", False), ("0.0.0.0", False), ("::", False)])
def test_loopback_only_by_address(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_name_like_127_needs_tls_and_consent(settings: Settings) -> None:
    with pytest.raises(ListenError, match="not loopback"):
        server_configs(FastAPI(), settings.model_copy(update={"api_host": "127.evil.example"}))


def test_database_file_is_private(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state/xfrmctl.db"
    old = os.umask(0o022)
    try:
        Database(url).dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state" / "xfrmctl.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_existing_database_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "xfrmctl.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    Database(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _other_group() -> grp.struct_group:
    return next(g for g in grp.getgrall() if g.gr_gid != os.getgid())


def test_unix_socket_is_0660_with_the_group(settings: Settings, tmp_path: Path) -> None:
    group = _other_group()
    path = tmp_path / "run" / "api.sock"
    conf = settings.model_copy(update={"api_socket": path, "api_port": None,
                                       "api_socket_group": group.gr_name})
    (config,) = server_configs(FastAPI(), conf)
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == group.gr_gid
    assert config.uds == str(path)
    with pytest.raises(ListenError, match="no such group"):
        server_configs(FastAPI(), conf.model_copy(update={"api_socket_group": "no-such-grp"}))


async def test_unix_socket_back_off_is_per_user(settings: Settings, db: Database,
                                                tmp_path: Path) -> None:
    """Over the real socket: the client is the peer's uid (SO_PEERCRED), and the
    socket serves the API."""
    from api.main import create_app  # noqa: PLC0415

    path = tmp_path / "api.sock"
    conf = settings.model_copy(update={"api_socket": path, "api_port": None})
    app = create_app(conf, db=db)
    token = make_token(db, "ops", Scope.READ)
    (config,) = server_configs(app, conf)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server._serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            good = {"authorization": f"Bearer {token}"}
            assert (await client.get("/api/v1/status", headers=good)).status_code == 200
            for _ in range(4):  # three free failures, then the back-off starts
                r = await client.get("/api/v1/status", headers={"authorization": "Bearer no"})
                assert r.status_code == 401
            r = await client.get("/api/v1/status", headers={"authorization": "Bearer no"})
            assert r.status_code == 429
        assert app.state.services.throttle.retry_after(f"uid:{os.getuid()}") > 0
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5)


def _client(app: FastAPI, address: str, token: str | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                             base_url="http://test/api/v1", headers=headers)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_failures_slow_down_only_their_source(app: FastAPI,
                                                    tokens: dict[Scope, str]) -> None:
    clock = FakeClock()
    app.state.services.throttle.clock = clock
    async with _client(app, "198.51.100.66", "xfc_guessed") as attacker, \
            _client(app, "203.0.113.5", tokens[Scope.READ]) as operator, \
            _client(app, "198.51.100.66", tokens[Scope.READ]) as same_source:
        for _ in range(3):  # a few typos are free
            assert (await attacker.get("/status")).status_code == 401
        r = await attacker.get("/status")
        assert r.status_code == 401  # the 4th failure starts the back-off
        r = await attacker.get("/status")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # another client with a valid token is not slowed down at all
        assert (await operator.get("/status")).status_code == 200
        # the blocked source is refused even with a valid token until the delay ends
        assert (await same_source.get("/status")).status_code == 429
        clock.now += 1
        assert (await same_source.get("/status")).status_code == 200
        assert (await attacker.get("/status")).status_code == 401  # counted afresh


def test_back_off_doubles_is_capped_and_forgotten() -> None:
    clock = FakeClock()
    throttle = AuthThrottle(maximum=4, base=0.5, free=1, clock=clock)
    delays = []
    for _ in range(6):
        throttle.failed("a")
        delays.append(throttle.retry_after("a"))
    assert delays == [0, 0.5, 1, 2, 4, 4]
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0
    throttle.failed("b")
    throttle.failed("b")
    clock.now += throttle.forget_after + 1
    assert throttle.retry_after("b") == 0 and len(throttle) == 0


def test_back_off_table_is_bounded() -> None:
    throttle = AuthThrottle(capacity=100, free=0)
    for i in range(10_000):
        throttle.failed(f"2001:db8::{i:x}")
    assert len(throttle) == 100
    assert throttle.retry_after("2001:db8::270f") > 0  # the most recent are kept


async def _raw_post(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> tuple[int, bool]:
    """Call the app as a server would; returns the status and whether the body was read."""
    read = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("192.0.2.9", 5000),
             "server": ("127.0.0.1", 8463),
             "headers": [(b"content-type", b"application/json"), *headers]}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent[0]["status"], read


@pytest.mark.parametrize("body", [b"{not json", b"[" * 100_000, b'{"name": 1}' + b" " * 10**6])
@pytest.mark.parametrize("auth", [None, b"Bearer xfc_wrong"])
async def test_authentication_comes_before_the_body(app: FastAPI, body: bytes,
                                                    auth: bytes | None) -> None:
    headers = [(b"authorization", auth)] if auth else []
    status, read = await _raw_post(app, "/api/v1/connections", headers, body)
    assert status == 401
    assert not read


async def test_valid_token_still_gets_body_validation(app: FastAPI,
                                                      tokens: dict[Scope, str]) -> None:
    headers = [(b"authorization", f"Bearer {tokens[Scope.ADMIN]}".encode())]
    status, read = await _raw_post(app, "/api/v1/connections", headers, b"{not json")
    assert (status, read) == (422, True)
