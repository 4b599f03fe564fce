"""The fleet's database side, on a real PostgreSQL (throwaway server) and SQLite: a
committed change reaches a listening daemon within a second (NOTIFY), a lost listening
connection is re-made and resyncs, a rolled-back change announces nothing; a gateway's
start clears only its own stale SA rows; reachability follows the heartbeat."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from tests.support.postgres import fresh_database
from xfrmctl.daemon.dbconfig import prepare_database, read_conf
from xfrmctl.daemon.fleet import libpq_url, listen_for_changes
from xfrmctl.daemon.recorder import _keep_only
from xfrmctl.store import fleet, repo
from xfrmctl.store import models as m
from xfrmctl.store.db import Database
from xfrmctl.store.secrets import SecretBox


@pytest.fixture(scope="module")
def pg(postgres_url: str) -> str:
    url = fresh_database(postgres_url, "changes")
    prepare_database(url)
    return url


def _peer(db: Database, name: str) -> int:
    return db.call(repo.create, m.Peer, {"name": name}, actor="test").id


async def _next(calls: asyncio.Queue[float], timeout: float) -> float:
    return await asyncio.wait_for(calls.get(), timeout)


async def test_a_committed_change_reaches_a_listener_within_a_second(pg: str) -> None:
    db = Database(pg)
    calls: asyncio.Queue[float] = asyncio.Queue()

    async def changed() -> None:
        calls.put_nowait(time.monotonic())

    url = libpq_url(pg)
    assert url is not None and libpq_url("sqlite:///x.db") is None
    listener = asyncio.get_running_loop().create_task(listen_for_changes(url, changed))
    try:
        await _next(calls, 10)  # the resync on connecting
        latencies = []
        for n in range(5):
            start = time.monotonic()
            await db.run(repo.create, m.Peer, {"name": f"p{n}"}, actor="test")
            latencies.append(await _next(calls, 1.0) - start)
        assert max(latencies) < 1.0, latencies

        def rolled_back(session: object) -> None:
            repo.create(session, m.Peer, {"name": "never"}, actor="test")  # type: ignore[arg-type]
            raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            await db.run(rolled_back)
        with pytest.raises(TimeoutError):
            await _next(calls, 0.5)

        # the listening connection dies; a change made meanwhile is found by the resync
        with db.engine.begin() as conn:
            killed = conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()")).scalars().all()
        assert killed == [True]
        _peer(db, "while-away")
        await _next(calls, 10)
        start = time.monotonic()
        await db.run(repo.create, m.Peer, {"name": "after"}, actor="test")
        assert await _next(calls, 1.0) - start < 1.0  # listening again
    finally:
        listener.cancel()
        db.dispose()


def test_a_gateway_runs_its_own_and_the_unassigned_connections(pg: str,
                                                             tmp_path: Path) -> None:
    db = Database(pg)
    box = SecretBox(b"k" * 32)
    try:
        a = db.call(fleet.register_gateway, "run-a", [], "t", interval=5).id
        b = db.call(fleet.register_gateway, "run-b", [], "t", interval=5).id
        secret = db.call(repo.create_secret, box, name="run-psk", kind=m.SecretKind.PSK,
                         value=b"pw", actor="t").id
        for name, gateway in (("run-all", None), ("run-on-a", a), ("run-on-b", b)):
            db.call(repo.create, m.Connection, {"name": name, "gateway_id": gateway,
                                                "secret_id": secret}, actor="t")
        mine = {g: sorted(n for n in db.call(read_conf, box, None, None, g)[0].connections
                          if n.startswith("run-")) for g in (a, b, None)}
        assert mine == {a: ["run-all", "run-on-a"], b: ["run-all", "run-on-b"],
                        None: ["run-all"]}
    finally:
        db.dispose()


def test_a_restart_clears_only_its_own_stale_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    prepare_database(url)
    db = Database(url)
    try:
        a = db.call(fleet.register_gateway, "gw-a", [], "t", interval=1).id
        b = db.call(fleet.register_gateway, "gw-b", [], "t", interval=1).id
        for ident, gateway in (("gw-a:1", a), ("gw-a:2", a), ("gw-b:1", b), ("7", None)):
            db.call(repo.upsert_ike_sa, {
                "id": ident, "gateway_id": gateway, "connection_id": None,
                "state": "ESTABLISHED", "initiator": True, "spi_i": "1" * 16,
                "spi_r": "2" * 16, "local_addr": "192.0.2.1", "local_port": 500,
                "remote_addr": "192.0.2.2", "remote_port": 500})
        assert db.call(_keep_only, ["gw-a:2"], a) == 2  # its gone SA and a pre-fleet row
        rows = db.call(fleet.recorded_sas, m.IkeSaRecord)
        assert [(r.id, gw, stale) for r, gw, stale in rows] == [
            ("gw-a:2", "gw-a", False), ("gw-b:1", "gw-b", False)]
        db.call(lambda s: s.execute(  # gw-b missed more than 3 heartbeats
            update(m.Gateway).where(m.Gateway.id == b)
            .values(heartbeat_at=m.utcnow() - timedelta(seconds=3.5))))
        db.call(fleet.heartbeat, a)
        states = {g.name: (g.reachable, g.ike_sas) for g in db.call(fleet.list_gateways)}
        assert states == {"gw-a": (True, 1), "gw-b": (False, 1)}
        rows = db.call(fleet.recorded_sas, m.IkeSaRecord, "gw-b")
        assert [(r.id, gw, stale) for r, gw, stale in rows] == [("gw-b:1", "gw-b", True)]
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_write_racing_another_is_refused_not_lost(backend: str, pg: str,
                                                    tmp_path: Path) -> None:
    """Two writers read version 1; the first commits; the second's UPDATE (WHERE version
    = 1) hits nothing and is refused (409 in the API) instead of overwriting."""
    url = pg if backend == "postgresql" else f"sqlite:///{tmp_path}/x.db"
    if backend == "sqlite":
        prepare_database(url)
    db = Database(url)
    try:
        ident = db.call(repo.create, m.Connection, {"name": f"race-{backend}"},
                        actor="t").id
        with db.sessions.begin() as slow:
            row = slow.get(m.Connection, ident)
            assert row is not None and row.version == 1
            repo.check_version(row, 1)  # what the slow writer read still holds here
            db.call(repo.update, m.Connection, ident, {"dpd_delay": 5}, actor="fast")
            with pytest.raises(repo.Conflict, match="changed by someone else"):
                repo.update(slow, m.Connection, ident, {"dpd_delay": 7}, actor="slow")
        row = db.call(repo.get, m.Connection, ident)
        assert (row.dpd_delay, row.version) == (5, 2)
        with pytest.raises(repo.Conflict, match="changed since version 1"):
            repo.check_version(row, 1)
    finally:
        db.dispose()
