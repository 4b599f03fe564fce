"""The daemon (main.run) in this process on the in-memory kernel, with no sockets, and
an API client over its database."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from api.main import create_app
from xfrmctl.config import Settings
from xfrmctl.daemon import main
from xfrmctl.daemon.controller import Controller
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.store import models as m
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.secrets import SecretBox
from xfrmctl.store.tokens import Scope

PSK = "file-db test-only psk 5b7e"


class NoEndpoints:
    """The daemon's IKE endpoints without sockets: remembers where it was asked to listen."""

    def __init__(self, receive: Callable[..., None]) -> None:
        self.opened: list[str] = []

    async def open(self, addresses: list[str], ike_port: int, nat_port: int) -> None:
        self.opened = addresses

    def send(self, *args: object) -> None: ...

    send_keepalive = send

    def close(self) -> None: ...


def conn_yaml(remote: str, start: str = "none", psk: str = f"psk: {PSK}") -> str:
    return (f"    local_addrs: [192.0.2.1]\n    remote_addrs: [{remote}]\n    {psk}\n"
            f"    start_action: {start}\n    children:\n      lan:\n"
            f"        local_ts: [198.51.100.0/24]\n        remote_ts: [203.0.113.0/24]\n")


TWO = ("listen: [192.0.2.1]\nconnections:\n  site-b:\n" + conn_yaml("192.0.2.2", "start")
       + "  site-c:\n" + conn_yaml("192.0.2.3"))


@dataclass
class Daemon:
    controller: Controller
    task: asyncio.Task[int]
    db: Database
    box: SecretBox
    api: httpx.AsyncClient

    async def call(self, method: str, url: str, status: int = 200, **kw: Any) -> Any:
        r = await self.api.request(method, url, **kw)
        assert r.status_code == status, r.text
        return r.json() if r.content else None

    def names(self) -> list[str]:
        return sorted(self.db.call(lambda s: list(s.scalars(select(m.Connection.name)))))


def daemon_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings (and environment) for a daemon on a database in `tmp_path`, no sockets."""
    url = f"sqlite:///{tmp_path}/x.db"
    monkeypatch.setenv("XFRMCTL_DATABASE_URL", url)
    monkeypatch.setenv("XFRMCTL_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    monkeypatch.setenv("XFRMCTL_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.setattr(main, "Endpoints", NoEndpoints)
    return Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                    api_socket=None)


@asynccontextmanager
async def daemon(settings: Settings, config: Path | None, monkeypatch: pytest.MonkeyPatch,
                 listen: tuple[str, ...] = ()) -> AsyncIterator[Daemon]:
    started: asyncio.Future[Controller] = asyncio.get_running_loop().create_future()
    original = Controller.start

    async def start(self: Controller) -> None:
        await original(self)
        started.set_result(self)

    monkeypatch.setattr(Controller, "start", start)
    task = asyncio.get_running_loop().create_task(
        main.run(config, kernel_kind="memory", listen=listen))
    await asyncio.wait([started, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert not task.done(), f"the daemon ended with {task.result()}"
    db = Database(settings.database_url)
    token = db.call(repo.create_token, name=f"t{id(task)}", scopes=[Scope.ADMIN],
                    actor=None)[1]
    app = create_app(settings, started.result(), db=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test/api/v1",
                                 headers={"authorization": f"Bearer {token}"}) as api:
        yield Daemon(started.result(), task, db,
                     SecretBox.from_file(settings.secret_key_file), api)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 30) == 0
    db.dispose()


def watched_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Database-mode environment on the fake kernel: what main.run started is recorded in
    the returned dict (url, kernel, controller, policies at start)."""
    url = f"sqlite:///{tmp_path}/x.db"
    monkeypatch.setenv("XFRMCTL_DATABASE_URL", url)
    monkeypatch.setenv("XFRMCTL_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    monkeypatch.setenv("XFRMCTL_CONFIG", str(tmp_path / "none.yaml"))
    kernel = FakeKernel()

    async def open_kernel() -> FakeKernel:
        return kernel

    monkeypatch.setattr(main, "open_kernel", open_kernel)
    monkeypatch.setattr(main, "Endpoints", NoEndpoints)
    seen: dict[str, Any] = {"url": url, "kernel": kernel}
    original = Controller.start

    async def start(self: Controller) -> None:
        seen["controller"] = self
        await original(self)
        seen["policies"] = len(kernel.policies)

    monkeypatch.setattr(Controller, "start", start)
    return seen


def file_and_database(tmp_path: Path, doc: dict[str, Any]) -> tuple[Path, Database, SecretBox]:
    """`doc` written as the YAML file eap.yaml, and a fresh migrated SQLite database with
    its secret box (the caller applies the file and disposes of the database)."""
    path = tmp_path / "eap.yaml"
    path.write_text(yaml.safe_dump(doc))
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    return path, Database(url), SecretBox.from_file(tmp_path / "key")
