"""Alembic migrations from an empty database, on SQLite and a real PostgreSQL: the result
matches the models, and the repository works on it (constraints included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from tests.support.postgres import fresh_database
from xfrmctl.store import fleet, repo
from xfrmctl.store.db import Database, make_engine
from xfrmctl.store.migrate import HEAD_REVISION, alembic_config, current_tables, downgrade, upgrade
from xfrmctl.store.models import Base, Child, Connection, EventKind, Peer, Secret
from xfrmctl.store.secrets import SecretBox
from xfrmctl.store.tokens import Scope


def _check_round_trip(url: str) -> None:
    upgrade(url)
    assert set(Base.metadata.tables) <= current_tables(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert revision == HEAD_REVISION
    _exercise(url)
    downgrade(url, "base")
    assert current_tables(url) <= {"alembic_version"}
    upgrade(url)  # and up again from empty


def _exercise(url: str) -> None:
    db = Database(url)
    box = SecretBox(b"k" * 32)
    try:
        peer = db.call(repo.create, Peer, {"name": "p", "addresses": ["203.0.113.5"]},
                       actor="test")
        conn = db.call(repo.create, Connection, {"name": "c", "peer_id": peer.id,
                                                 "remote_addrs": ["203.0.113.5"]}, actor="test")
        db.call(repo.create, Child, {"name": "net", "connection_id": conn.id,
                                     "local_ts": ["192.0.2.0/24"], "if_id": 2**32 - 1,
                                     "life_bytes": 2**62}, actor="test")
        with pytest.raises(repo.Conflict):
            db.call(repo.create, Peer, {"name": "p"}, actor="test")
        with pytest.raises(repo.Conflict):  # still referenced
            db.call(repo.delete, Peer, peer.id, actor="test")
        secret = db.call(repo.create_secret, box, name="s", kind="psk", value=b"pw",
                         actor="test")
        assert db.call(repo.reveal_secret, box, secret.id) == b"pw"
        assert db.call(repo.replace_secret_value, box, secret.id, b"pw2", version="2",
                       actor="test").version == "2"
        token, plaintext = db.call(repo.create_token, name="t", scopes=[Scope.READ], actor=None)
        found = db.call(repo.authenticate, plaintext)
        assert found is not None and found.id == token.id
        db.call(repo.delete, Connection, conn.id, actor="test")  # cascades to children
        _, count = db.call(repo.list_page, Child)
        assert count == 0
        events, _ = db.call(repo.list_events, kind=EventKind.AUDIT)
        assert events[0].type == "connections.delete" and events[0].ts.tzinfo is not None
        db.call(repo.upsert_ike_sa, {
            "id": "ike-1", "connection_id": None, "state": "ESTABLISHED", "initiator": True,
            "spi_i": "1122334455667788", "spi_r": "99aabbccddeeff00", "local_addr": "192.0.2.1",
            "local_port": 500, "remote_addr": "198.51.100.1", "remote_port": 4500})
        db.call(repo.upsert_child_sa, {
            "id": "c-1", "ike_sa_id": "ike-1", "name": "net", "state": "INSTALLED",
            "mode": "tunnel", "protocol": "esp", "spi_in": "c0ffee01", "spi_out": "c0ffee02"})
        assert db.call(repo.update_child_counters, {"c-1": (2**40, 1, 2, 3)}) == 1
        assert db.call(repo.delete_ike_sa, "ike-1")
    finally:
        db.dispose()


def test_migrations_sqlite(tmp_path: Path) -> None:
    _check_round_trip(f"sqlite:///{tmp_path}/x.db")


def test_migrations_postgresql(postgres_url: str) -> None:
    _check_round_trip(postgres_url)


def test_0002_turns_stored_mobike_off_and_marks_nothing_as_file_managed(tmp_path: Path) -> None:
    """A connection stored before 0002 had mobike on by default (never acted on); after
    the upgrade it is off (so it still loads) and it stays managed by the database."""
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0001")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO connections (name, enabled, local_addrs, remote_addrs,"
                          " local_port, remote_port, auth, ike_proposals, start_action,"
                          " dpd_delay, dpd_action, rekey_time, reauth_time, over_time,"
                          " fragmentation, encap, mobike, created_at, updated_at) VALUES"
                          " ('old', 1, '[]', '[]', 500, 500, 'psk', 'aes128-sha256-modp2048',"
                          " 'none', 0, 'clear', 14400, 0, 0, 'yes', 0, 1,"
                          " '2026-01-01', '2026-01-01')"))
    upgrade(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT mobike, managed_by, close_action, pool,"
                                " request_virtual_ip FROM connections")).one()
    engine.dispose()
    assert tuple(row) == (0, None, "none", None, 0)


def test_0003_keeps_stored_secrets_without_a_version_and_back(tmp_path: Path) -> None:
    """A secret stored before 0003 has no version after the upgrade (a client that gives
    one rewrites it once); the downgrade drops the versions and keeps the secrets."""
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0002")
    engine = make_engine(url)
    box = SecretBox(b"k" * 32)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO secrets (name, kind, ciphertext, created_at, updated_at)"
                          " VALUES ('old', 'psk', :c, '2026-01-01', '2026-01-01')"),
                     {"c": box.encrypt("old", b"old-psk")})
    upgrade(url)
    db = Database(url)
    try:
        (old,), _ = db.call(repo.list_page, Secret)
        assert old.version is None and db.call(repo.reveal_secret, box, old.id) == b"old-psk"
        db.call(repo.replace_secret_value, box, old.id, b"new-psk", version="7", actor="t")
    finally:
        db.dispose()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM secrets")).scalar() == "7"
    downgrade(url, "0002")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM secrets")).scalars().all() == ["old"]
        columns = {c["name"] for c in inspect(engine).get_columns("secrets")}
    engine.dispose()
    assert "version" not in columns


def test_0005_gives_stored_connections_relaxed_revocation_and_back(tmp_path: Path) -> None:
    """A connection stored before 0005 checks revocation as strongSwan's default (relaxed);
    the downgrade drops the CRLs and the column and keeps the connection."""
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0003")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO connections (name, enabled, local_addrs, remote_addrs,"
                          " local_port, remote_port, auth, ike_proposals, start_action,"
                          " dpd_delay, dpd_action, rekey_time, reauth_time, over_time,"
                          " fragmentation, encap, mobike, created_at, updated_at) VALUES"
                          " ('c', 1, '[]', '[]', 500, 500, 'psk', 'aes128-sha256-modp2048',"
                          " 'none', 0, 'clear', 14400, 0, 0, 'yes', 0, 0,"
                          " '2026-01-01', '2026-01-01')"))
    upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT revocation FROM connections")).scalar() == "relaxed"
        assert conn.execute(text("SELECT count(*) FROM crls")).scalar() == 0
    downgrade(url, "0003")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM connections")).scalars().all() == ["c"]
        columns = {c["name"] for c in inspect(engine).get_columns("connections")}
        tables = inspect(engine).get_table_names()
    engine.dispose()
    assert "revocation" not in columns and "crls" not in tables


def test_a_new_database_gets_the_migrations_schema_at_once(tmp_path: Path) -> None:
    """The daemon creates a new database from the models and stamps it (fast in a VM
    without KVM): the same schema as the migrations give, and later migrations apply."""
    from xfrmctl.daemon.dbconfig import prepare_database  # noqa: PLC0415

    url = f"sqlite:///{tmp_path}/new.db"
    prepare_database(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert diff == [] and revision == HEAD_REVISION
    downgrade(url, "0001")  # and the migrations run on it both ways
    upgrade(url)
    _exercise(url)


def test_head_revision_is_alembics_head() -> None:
    """The daemon's start compares the database with HEAD_REVISION without importing
    Alembic: a migration added without bumping it would go unapplied."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_current_head() == HEAD_REVISION


def test_a_database_at_head_starts_without_alembic(tmp_path: Path) -> None:
    """A daemon start on a database at head does not import Alembic (half a minute of the
    lab VM's start); one behind head is migrated."""
    url = f"sqlite:///{tmp_path}/at.db"
    upgrade(url, "0001")
    probe = ("import sys; from xfrmctl.daemon.dbconfig import prepare_database;"
             f"prepare_database({url!r}); print(sorted(m for m in sys.modules if "
             "m.startswith('alembic'))[:1])")
    run = [sys.executable, "-c", probe]
    behind = subprocess.run(run, capture_output=True, text=True, check=True)
    assert behind.stdout.strip() != "[]"  # migrated from 0001, with Alembic
    at_head = subprocess.run(run, capture_output=True, text=True, check=True)
    assert at_head.stdout.strip() == "[]"


def _upgrade_populated_0006(url: str) -> None:
    """A single gateway's database at 0006 with a connection, its child and recorded SAs:
    after 0007 all of it is there, run by every gateway (gateway_id NULL), and a fleet
    gateway can be registered and given the connection; the downgrade keeps the rows."""
    upgrade(url, "0006")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO connections (name, enabled, local_addrs, remote_addrs, local_port,"
            " remote_port, auth, ike_proposals, start_action, dpd_delay, dpd_action,"
            " rekey_time, reauth_time, over_time, fragmentation, encap, mobike,"
            " close_action, request_virtual_ip, dns, revocation, ppk_required, created_at,"
            " updated_at) VALUES ('old', true, '[]', '[\"203.0.113.5\"]', 500, 500, 'psk',"
            " 'aes128-sha256-modp2048', 'none', 0, 'clear', 14400, 0, 0, 'yes', false,"
            " false, 'none', false, '[]', 'relaxed', false, '2026-01-01 00:00:00+00',"
            " '2026-01-01 00:00:00+00')"))
        conn_id = conn.execute(text("SELECT id FROM connections")).scalar()
        conn.execute(text(
            "INSERT INTO children (connection_id, name, local_ts, remote_ts, mode,"
            " replay_window, esn, rekey_time, life_time, rekey_bytes, life_bytes,"
            " rekey_packets, life_packets, tfc_padding, start_action, interface_addresses,"
            " routes, mss, created_at, updated_at) VALUES (:c, 'net', '[]', '[]', 'tunnel',"
            " 32, false, 3600, 3960, 0, 0, 0, 0, 0, 'none', '[]', '[]', 'off',"
            " '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')"), {"c": conn_id})
        conn.execute(text(
            "INSERT INTO ike_sas (id, connection_id, state, initiator, spi_i, spi_r,"
            " local_addr, local_port, remote_addr, remote_port, updated_at) VALUES"
            " ('7', :c, 'ESTABLISHED', true, '1122334455667788', '99aabbccddeeff00',"
            " '192.0.2.1', 500, '203.0.113.5', 500, '2026-01-01 00:00:00+00')"),
            {"c": conn_id})
        conn.execute(text(
            "INSERT INTO child_sas (id, ike_sa_id, name, state, mode, protocol, spi_in,"
            " spi_out, esn, local_ts, remote_ts, bytes_in, bytes_out, packets_in,"
            " packets_out, updated_at) VALUES ('c0ffee01', '7', 'net', 'INSTALLED',"
            " 'tunnel', 'esp', 'c0ffee01', 'c0ffee02', false, '[]', '[]', 1, 2, 3, 4,"
            " '2026-01-01 00:00:00+00')"))
    upgrade(url)
    with engine.connect() as conn:
        # (SQLite copies an altered table: with foreign keys on, dropping the original
        # deleted every child and CHILD_SA row by cascade before env.py turned them off)
        assert conn.execute(text("SELECT name FROM children")).scalars().all() == ["net"]
        for table in ("connections", "ike_sas", "child_sas"):
            rows = conn.execute(text(f"SELECT gateway_id FROM {table}")).all()
            assert rows == [(None,)], table
    db = Database(url)
    try:
        gw = db.call(fleet.register_gateway, "gw-a", ["192.0.2.1"], "1.0", interval=5)
        db.call(repo.update, Connection, conn_id, {"gateway_id": gw.id}, actor="t")
        assert db.call(repo.get, Connection, conn_id).gateway_id == gw.id
        with pytest.raises(repo.Conflict):  # a gateway that runs connections stays
            db.call(fleet.delete_gateway, "gw-a")
    finally:
        db.dispose()
    downgrade(url, "0006")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM connections")).scalars().all() == ["old"]
        assert conn.execute(text("SELECT bytes_out FROM child_sas")).scalar() == 2
        assert conn.execute(text("SELECT count(*) FROM children")).scalar() == 1
        assert "gateways" not in inspect(conn).get_table_names()
    engine.dispose()


def test_0007_keeps_a_single_gateways_data_sqlite(tmp_path: Path) -> None:
    _upgrade_populated_0006(f"sqlite:///{tmp_path}/old.db")


def test_0007_keeps_a_single_gateways_data_postgresql(postgres_url: str) -> None:
    _upgrade_populated_0006(fresh_database(postgres_url))
