"""`xfrmctl daemon` in database mode, as a process would run it (fake kernel, no sockets):
a fresh database is migrated, its connections loaded, the recorder attached; a database
that cannot be used is refused with a clear message."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.support.db_daemon import watched_daemon
from xfrmctl.daemon import main
from xfrmctl.daemon.controller import Controller
from xfrmctl.store import models as m
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.secrets import SecretBox

PSK = "main test-only psk 0d1e"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return watched_daemon(tmp_path, monkeypatch)


async def _run_until_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the daemon until systemd would hear READY=1, then send SIGTERM."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    loop = asyncio.get_running_loop()
    task = loop.create_task(main.run(None, listen=["192.0.2.1"]))
    try:
        ready = loop.create_task(loop.sock_recv(sock, 64))
        await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), task.result()  # the daemon ended before it was ready
        assert ready.result() == b"READY=1"
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(task, 30)
    finally:
        sock.close()


async def test_database_mode_loads_connections_with_their_ids(
        env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upgrade(env["url"])
    db = Database(env["url"])
    box = SecretBox.from_file(tmp_path / "secret.key")
    secret = db.call(repo.create_secret, box, name="p", kind=m.SecretKind.PSK,
                     value=PSK.encode(), actor=None)
    conn = db.call(repo.create, m.Connection, {
        "name": "site-b", "local_addrs": ["192.0.2.1"], "remote_addrs": ["192.0.2.2"],
        "secret_id": secret.id, "start_action": m.StartAction.TRAP}, actor=None)
    db.call(repo.create, m.Child, {"connection_id": conn.id, "name": "lan",
                                   "local_ts": ["198.51.100.0/24"],
                                   "remote_ts": ["203.0.113.0/24"]}, actor=None)
    assert await _run_until_ready(tmp_path, monkeypatch) == 0
    controller: Controller = env["controller"]
    assert controller.config_source is not None
    assert [(r.id, r.name) for r in controller.connections.values()] == [(conn.id, "site-b")]
    assert env["policies"] == 1  # start_action trap: the outbound trap policy
    events = db.call(lambda s: [e.type for e in s.scalars(select(m.Event))])
    assert events.count("connections.create") == 1
    db.dispose()


async def test_fresh_database_is_created(env: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _run_until_ready(tmp_path, monkeypatch) == 0
    db = Database(env["url"])
    assert db.call(lambda s: list(s.scalars(select(m.Connection)))) == []
    db.dispose()


async def test_unusable_database_is_refused(env: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("XFRMCTL_DATABASE_URL",
                       "postgresql+psycopg://xfrmctl:hunter2@127.0.0.1:1/none")
    with caplog.at_level(logging.ERROR):
        assert await main.run(None) == 2
    assert "configuration from the database: database postgresql+psycopg://xfrmctl:***@" \
        in caplog.text
    assert "hunter2" not in caplog.text
