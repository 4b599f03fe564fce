"""The database fails while the daemon runs, or at its start: locked, read-only, full or
corrupt. A clear sentence says what to do; tunnels and negotiation go on; the recorder
keeps its rows and retries with back-off until the database is back; at start a locked
database is waited for, a corrupt one ends the start with EX_CONFIG (no restart loop)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError

from tests.support.db_daemon import watched_daemon
from tests.support.gateways import Gateways, make
from xfrmctl.daemon import dbfaults, main
from xfrmctl.daemon.recorder import Recorder
from xfrmctl.port import Target
from xfrmctl.store import models as m
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return watched_daemon(tmp_path, monkeypatch)


def _child_rows(db: Database) -> set[str]:
    return set(db.call(lambda s: [r.spi_in for r in s.query(m.ChildSaRecord)]))


async def _recording(tmp_path: Path) -> tuple[Gateways, Database, Recorder, Path]:
    path = tmp_path / "x.db"
    db = Database(f"sqlite:///{path}")
    m.Base.metadata.create_all(db.engine)
    gw = await make()
    recorder = Recorder(gw.a, db, interval=3600)
    recorder.retry_first = 0.05
    await recorder.start()
    await gw.a.rekey(Target("connection", str(next(iter(gw.a.connections.values())).id)))
    await gw.settle()
    await recorder.flush()
    return gw, db, recorder, path


async def _rekey_child(gw: Gateways) -> int:
    (child,) = await gw.a.list_child_sas()
    await gw.a.rekey(Target("child_sa", child.id))
    await gw.settle()
    (new,) = await gw.a.list_child_sas()
    assert new.spi_in != child.spi_in
    assert {new.spi_in, new.spi_out} <= {e.spec.spi for e in gw.ka.sas.values()}
    return new.spi_in


async def _wait(predicate: Any, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline
        await asyncio.sleep(0.02)


async def test_corrupt_database_pauses_recording_and_negotiation_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gw, db, recorder, path = await _recording(tmp_path)
    header = path.read_bytes()[:100]
    with path.open("r+b") as f:
        f.write(b"this is not an SQLite header at all, it was overwritten.....\0" * 2)
    with caplog.at_level(logging.WARNING, logger="xfrmctl.daemon.recorder"):
        spi = await _rekey_child(gw)  # the daemon negotiates and installs on
        await _wait(lambda: recorder.paused is not None)
        assert recorder.paused.kind == "corrupt"
        await asyncio.sleep(0.3)  # some retries, each failing
        with path.open("r+b") as f:  # the operator restores the file
            f.write(header)
        await asyncio.wait_for(recorder.flush(), 10)
    assert f"{spi:08x}" in _child_rows(db)  # kept and written once the database was back
    messages = [r.getMessage() for r in caplog.records]
    paused = [t for t in messages if t.startswith("recording paused")]
    assert paused[0].startswith("recording paused: the database file is corrupt: restore it "
                                "from a backup")
    assert len(paused) < 10  # said once per back-off step, not once per row
    assert "recording resumed: the database is writable again" in messages
    assert not any(r.exc_info for r in caplog.records)  # no traceback
    await recorder.stop()
    await gw.a.stop()
    await gw.b.stop()
    db.dispose()


async def test_locked_database_is_waited_out(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    gw, db, recorder, path = await _recording(tmp_path)
    lock = sqlite3.connect(path, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    with caplog.at_level(logging.WARNING, logger="xfrmctl.daemon.recorder"):
        spi = await _rekey_child(gw)
        await _wait(lambda: recorder.paused is not None, 15)  # after SQLite's busy timeout
        assert recorder.paused.kind == "locked"
        lock.rollback()
        lock.close()
        await asyncio.wait_for(recorder.flush(), 20)
    assert f"{spi:08x}" in _child_rows(db)
    assert any(r.getMessage().startswith("recording paused: the database is locked by "
                                         "another process") for r in caplog.records)
    await recorder.stop()
    await gw.a.stop()
    await gw.b.stop()
    db.dispose()


def _real_error(path: Path, setup: str, statement: str, uri: bool = False) -> SQLAlchemyError:
    engine = create_engine(f"sqlite:///{path}" + ("?mode=ro&uri=true" if uri else ""))
    if uri:
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    if setup:
        event.listen(engine, "connect", lambda c, _r: c.execute(setup))
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    except SQLAlchemyError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("no error")


def test_faults_are_told_apart_from_real_sqlite_errors(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    with sqlite3.connect(path) as c:
        c.execute("create table t (x blob)")
    readonly = dbfaults.classify(_real_error(path, "", "insert into t values (1)", uri=True))
    assert readonly is not None and readonly.kind == "read-only" and readonly.transient
    full = dbfaults.classify(_real_error(path, "PRAGMA max_page_count = 2",
                                         "insert into t values (randomblob(100000))"))
    assert full is not None and full.kind == "full"
    assert full.sentence == "the disk holding the database is full: free some space"
    path.write_bytes(b"garbage" * 200)
    corrupt = dbfaults.classify(_real_error(path, "", "select * from t"))
    assert corrupt is not None and corrupt.kind == "corrupt" and not corrupt.transient
    assert dbfaults.classify(ValueError("a bug")) is None
    assert [dbfaults.backoff(w) for w in (None, 1.0, 32.0, 60.0)] == [1.0, 2.0, 60.0, 60.0]


async def test_corrupt_database_at_start_ends_with_ex_config(
        env: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "x.db").write_bytes(b"not a database " * 100)
    with caplog.at_level(logging.ERROR):
        assert await main.run(None) == dbfaults.EX_CONFIG == 78
    assert "configuration from the database: the database file is corrupt: restore it from " \
        "a backup" in caplog.text
    assert "Traceback" not in caplog.text
    unit = (Path(__file__).parents[2] / "deploy/systemd/xfrmctl.service").read_text()
    assert "RestartPreventExitStatus=78" in unit


async def test_locked_database_at_start_is_waited_for(
        env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    upgrade(env["url"])
    lock = sqlite3.connect(tmp_path / "x.db", check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # held for longer than SQLite's busy timeout (5 s)
    released = threading.Timer(6.5, lambda: (lock.rollback(), lock.close()))
    released.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    loop = asyncio.get_running_loop()
    told: list[bytes] = []
    try:
        with caplog.at_level(logging.INFO):
            task = loop.create_task(main.run(None, listen=["192.0.2.1"]))
            while b"READY=1" not in told:
                told.append(await asyncio.wait_for(loop.sock_recv(sock, 256), 30))
                assert not task.done(), task.result()  # waited, did not exit
            os.kill(os.getpid(), signal.SIGTERM)
            assert await asyncio.wait_for(task, 30) == 0
    finally:
        released.join()
        sock.close()
    assert "configuration from the database: the database is locked by another process" \
        in caplog.text and "retrying in 1 s" in caplog.text
    assert told[0].startswith(b"STATUS=waiting for the database: the database is locked")
    assert b"EXTEND_TIMEOUT_USEC=" in told[0]  # systemd does not time the start out
