"""One model of configuration: a daemon started with `--config FILE` keeps its
configuration in the database, the file applied into it (at start and on SIGHUP, all or
nothing), and the API shows and acts on every connection by name, file ones included.

Each daemon here is `main.run` in this process with the in-memory kernel
(`--kernel memory`) and no sockets; the API is an app over the same database."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import select

from api.schemas.config import ChildCreate, ConnectionCreate
from tests.support.db_daemon import (
    PSK,
    TWO,
    Daemon,
    conn_yaml,
    daemon,
    daemon_settings,
)
from tests.support.pki import make_ca, make_cert, make_crl, pem
from xfrmctl.config import Settings
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon import main
from xfrmctl.daemon.dbconfig import FileRefused, apply_file, load_file, read_conf
from xfrmctl.ike.constants import ProtocolId
from xfrmctl.ike.proposals import DEFAULT_ESP, DEFAULT_IKE, parse_proposals
from xfrmctl.port import ConnectionState
from xfrmctl.store import models as m
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.secrets import SecretBox


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return daemon_settings(tmp_path, monkeypatch)


async def _sighup(d: Daemon, caplog: pytest.LogCaptureFixture, word: str) -> None:
    mark = len(caplog.records)
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(300):
        if any(word in r.getMessage() for r in caplog.records[mark:]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no log line with {word!r} after SIGHUP")


async def test_file_daemon_serves_api_connections_with_their_own_ids(
        env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old file mode: `conn add test1` said "added" but the daemon refused it, test1
    showed site-b's state (both id 1) and terminating test1 tore down site-b."""
    path = tmp_path / "gw.yaml"
    path.write_text(TWO)
    async with daemon(env, path, monkeypatch) as d:
        site_b = d.controller.connections["site-b"]
        assert site_b.state is ConnectionState.CONNECTING  # start: initiating
        secret = await d.call("POST", "/secrets", 201, json={
            "name": "t1", "kind": "psk", "value": PSK})
        test1 = await d.call("POST", "/connections", 201, json={
            "name": "test1", "remote_addrs": ["192.0.2.9"], "secret_id": secret["id"]})
        await d.call("POST", "/connections/test1/children", 201, json={
            "name": "net", "local_ts": ["198.51.100.0/24"], "remote_ts": ["192.0.2.9/32"]})
        assert d.controller.connections["test1"].id == test1["id"]  # loaded at once
        ids = {r.name: r.id for r in d.controller.connections.values()}
        assert len(set(ids.values())) == 3

        status = await d.call("GET", "/status")
        assert status["kernel"] == "memory"
        by_name = {c["name"]: c for c in status["connections"]}
        assert sorted(by_name) == ["site-b", "site-c", "test1"]
        assert by_name["test1"]["state"] == "down" and by_name["test1"]["ike_sa_ids"] == []
        assert by_name["site-b"]["state"] == "connecting"

        await d.call("POST", "/connections/test1/terminate", 202)
        assert d.controller._sas_of(site_b), "site-b's IKE_SA was deleted"
        assert site_b.state is ConnectionState.CONNECTING
        await d.call("POST", "/connections/site-b/terminate", 202)  # by name
        assert site_b.wanted is False


async def test_file_connections_are_read_only_until_taken_over(
        env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(TWO)
    async with daemon(env, path, monkeypatch) as d:
        shown = await d.call("GET", "/connections/site-c")
        assert shown["managed_by"] == f"file:{path.resolve()}"
        for method, url, body in (("PATCH", "/connections/site-c", {"dpd_delay": 10}),
                                  ("DELETE", "/connections/site-c", None),
                                  ("POST", "/connections/site-c/children",
                                   {"name": "x", "local_ts": ["198.51.100.0/24"]})):
            r = await d.api.request(method, url, json=body)
            assert r.status_code == 409, r.text
            assert "edit the file" in r.json()["detail"] and str(path) in r.json()["detail"]
        child = (await d.call("GET", "/connections/site-c/children"))["data"][0]
        assert (await d.api.patch(f"/children/{child['id']}", json={"mtu": 1400})
                ).status_code == 409
        assert (await d.api.delete(f"/children/{child['id']}")).status_code == 409

        taken = await d.call("POST", "/connections/site-c/takeover")
        assert taken["managed_by"] is None
        await d.call("PATCH", "/connections/site-c", json={"dpd_delay": 10})
        assert d.controller.connections["site-c"].conf.dpd_delay == 10

        # The file loses both: site-b (still the file's) goes, site-c (taken over) stays,
        # and so does an API-created connection.
        await d.call("POST", "/connections", 201, json={
            "name": "api1", "remote_addrs": ["192.0.2.8"],
            "secret_id": (await d.call("POST", "/secrets", 201, json={
                "name": "a1", "kind": "psk", "value": PSK}))["id"]})
        path.write_text("listen: [192.0.2.1]\nconnections:\n  site-d:\n" + conn_yaml("192.0.2.4"))
        with caplog.at_level(logging.INFO):
            await _sighup(d, caplog, "reloaded")
        assert d.names() == ["api1", "site-c", "site-d"]
        assert sorted(d.controller.connections) == ["api1", "site-c", "site-d"]


async def test_refused_reload_leaves_everything_as_it_was(
        env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """SIGHUP with a missing psk_file used to log "Task exception was never retrieved"
    and leave the configuration half replaced."""
    path = tmp_path / "gw.yaml"
    path.write_text(TWO)
    async with daemon(env, path, monkeypatch) as d:
        before = {n: r.conf for n, r in d.controller.connections.items()}
        rows_before = d.db.call(lambda s: [repo.snapshot(r) for r in s.scalars(
            select(m.Connection).order_by(m.Connection.id))])
        path.write_text("listen: [192.0.2.1]\nconnections:\n  site-b:\n"
                        + conn_yaml("192.0.2.20", "start") + "  site-c:\n"
                        + conn_yaml("192.0.2.3", psk=f"psk_file: {tmp_path}/missing.psk"))
        with caplog.at_level(logging.INFO):
            await _sighup(d, caplog, "reload refused")
        message = next(r.getMessage() for r in caplog.records if "refused" in r.getMessage())
        assert str(path) in message and "site-c" in message and "psk_file" in message
        assert "missing.psk" in message
        assert {n: r.conf for n, r in d.controller.connections.items()} == before
        assert d.db.call(lambda s: [repo.snapshot(r) for r in s.scalars(
            select(m.Connection).order_by(m.Connection.id))]) == rows_before
        assert "never retrieved" not in caplog.text and "Traceback" not in caplog.text


async def test_refused_file_at_start_is_a_clear_error(
        env: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("connections:\n  a:\n" + conn_yaml("192.0.2.2", psk="psk_file: /nonexistent"))
    with caplog.at_level(logging.ERROR):
        assert await main.run(path, kernel_kind="memory") == 2
    assert "connection a: psk_file: cannot read /nonexistent" in caplog.text


def _bad_key_connection(url: str, box: SecretBox) -> int:
    """A pubkey connection whose private key secret is not a PEM key (written to the
    database directly, as an older version or a restore could have left it)."""
    upgrade(url)
    db = Database(url)
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        from tests.support.pki import pem, simple_cert  # noqa: PLC0415

        ca = pem(simple_cert("CA", key, "CA", key, True)).decode()
        cert = pem(simple_cert("gw", key, "CA", key, False)).decode()
        # past the API's validation on write: the row itself, as a restore could leave it
        secret = db.call(repo.create, m.Secret, {
            "name": "bad-key", "kind": m.SecretKind.PRIVATE_KEY,
            "ciphertext": box.encrypt("bad-key", b"not a PEM key")}, actor=None)
        ca_row = db.call(repo.create, m.CertificateAuthority, {
            "name": "ca", "pem": ca, "subject": "CN=CA", "not_after": key_dates()},
            actor=None)
        cert_row = db.call(repo.create, m.Certificate, {
            "name": "gw", "pem": cert, "subject": "CN=gw", "issuer": "CN=CA",
            "not_before": key_dates(), "not_after": key_dates(), "ca_id": ca_row.id,
            "key_secret_id": secret.id}, actor=None)
        row = db.call(repo.create, m.Connection, {
            "name": "bad", "auth": m.AuthMethod.PUBKEY, "remote_addrs": ["192.0.2.7"],
            "secret_id": secret.id, "certificate_id": cert_row.id, "ca_id": ca_row.id},
            actor=None)
        assert key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())  # a real key exists...
        return row.id
    finally:
        db.dispose()


def key_dates() -> Any:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.now(UTC)


async def test_unloadable_secret_marks_only_its_connection_down(
        env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to stop the daemon from starting (ValueError: Unable to load PEM file) and
    make every later change fail."""
    box = SecretBox.from_file(env.secret_key_file)
    bad_id = _bad_key_connection(env.database_url, box)
    path = tmp_path / "gw.yaml"
    path.write_text(TWO)
    async with daemon(env, path, monkeypatch) as d:
        assert sorted(d.controller.connections) == ["site-b", "site-c"]
        status = {c["name"]: c for c in (await d.call("GET", "/status"))["connections"]}
        assert status["bad"]["state"] == "down" and status["bad"]["id"] == bad_id
        assert status["bad"]["reason"] == "not loaded"
        assert "Unable to load PEM" in status["bad"]["detail"]["message"]
        assert "not a PEM key" not in str(status)
        secret = await d.call("POST", "/secrets", 201, json={
            "name": "n1", "kind": "psk", "value": PSK})
        await d.call("POST", "/connections", 201, json={
            "name": "new1", "remote_addrs": ["192.0.2.9"], "secret_id": secret["id"]})
        assert "new1" in d.controller.connections  # later changes still apply


def test_apply_keeps_ids_and_touches_only_its_own(env: Settings, tmp_path: Path) -> None:
    upgrade(env.database_url)
    db = Database(env.database_url)
    box = SecretBox.from_file(env.secret_key_file)
    try:
        other = tmp_path / "other.yaml"
        other.write_text("connections:\n  x:\n" + conn_yaml("192.0.2.30"))
        apply_file(db, box, other)
        path = tmp_path / "gw.yaml"
        path.write_text(TWO + "  x:\n" + conn_yaml("192.0.2.31"))
        _, applied = apply_file(db, box, path)
        assert applied.created == ["site-b", "site-c"] and applied.ignored == ["x"]
        conf, _ = db.call(read_conf, box)
        ids = {n: (c.id, c.children["lan"].id) for n, c in conf.connections.items()}
        assert conf.connections["x"].remote_addrs == ["192.0.2.30"]  # the other file's

        path.write_text(TWO.replace("192.0.2.3]", "192.0.2.33]"))
        _, again = apply_file(db, box, path)
        assert again.updated == ["site-c"] and again.unchanged == ["site-b"]
        conf, _ = db.call(read_conf, box)
        assert {n: (c.id, c.children["lan"].id) for n, c in conf.connections.items()} == ids
        assert conf.connections["site-c"].remote_addrs == ["192.0.2.33"]
        secrets = db.call(lambda s: len(list(s.scalars(select(m.Secret)))))

        path.write_text("connections:\n  site-b:\n" + conn_yaml("192.0.2.2", "start")
                        + "  site-c:\n" + conn_yaml("192.0.2.3", psk="psk_file: /nonexistent"))
        with pytest.raises(FileRefused, match="site-c: psk_file: cannot read /nonexistent"):
            apply_file(db, box, path)
        path.write_text("connections: {}\n")
        _, emptied = apply_file(db, box, path)
        assert emptied.removed == ["site-b", "site-c"]
        conf, _ = db.call(read_conf, box)
        assert list(conf.connections) == ["x"]
        # their PSKs went with them
        assert db.call(lambda s: len(list(s.scalars(select(m.Secret))))) == secrets - 2
    finally:
        db.dispose()


def test_same_defaults_in_file_and_api_and_mobike_on(tmp_path: Path) -> None:
    file_default = cf.ConnectionConf(psk="x").dpd_delay  # type: ignore[arg-type]
    api_default = ConnectionCreate(name="a").dpd_delay
    assert file_default == api_default == 0  # strongSwan's: off
    assert m.Connection.__table__.c.dpd_delay.default.arg == 0
    # proposals left out: the same set either way (they were narrower through the API)
    api_conn = ConnectionCreate(name="a")
    assert parse_proposals(api_conn.ike_proposals, ProtocolId.IKE) == DEFAULT_IKE
    api_child = ChildCreate(name="c", local_ts=["192.0.2.0/24"])
    assert api_child.esp_proposals is not None
    assert parse_proposals(api_child.esp_proposals, ProtocolId.ESP) == DEFAULT_ESP
    # MOBIKE: on by default everywhere, as strongSwan's; off when asked, and the core
    # offers it exactly then
    assert ConnectionCreate(name="a").mobike is True
    assert cf.ConnectionConf(psk="x").mobike is True  # type: ignore[arg-type]
    assert m.Connection.__table__.c.mobike.default.arg is True
    path = tmp_path / "m.yaml"
    path.write_text("connections:\n  a:\n    psk: x\n  b:\n    psk: x\n    mobike: false\n")
    loaded = load_file(path)
    assert cf.ike_config("a", loaded.connections["a"]).mobike is True
    assert cf.ike_config("b", loaded.connections["b"]).mobike is False
    with pytest.raises(ValueError, match="mobike"):
        ConnectionCreate(name="a", mobike="sometimes")  # type: ignore[arg-type]


async def test_pool_and_close_action_through_the_api(
        env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remote access (a pool) and close_action were refused in database mode."""
    async with daemon(env, None, monkeypatch, ("192.0.2.1",)) as d:
        secret = await d.call("POST", "/secrets", 201, json={
            "name": "ra", "kind": "psk", "value": PSK})
        await d.call("POST", "/connections", 201, json={
            "name": "ra", "secret_id": secret["id"], "pool": "10.3.0.0/28",
            "close_action": "trap", "local_addrs": ["192.0.2.1"]})
        record = d.controller.connections["ra"]
        assert record.ike.pool is not None and record.conf.pool == "10.3.0.0/28"
        assert record.conf.close_action is cf.CloseAction.TRAP
        lease = record.ike.pool.acquire("client.example.org")
        assert str(lease) == "10.3.0.1"
        r = await d.api.post("/connections", json={
            "name": "bad", "secret_id": secret["id"], "pool": "10.3.0.1/28"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][1] == "pool"
        r = await d.api.post("/connections", json={
            "name": "bad", "secret_id": secret["id"], "mobike": "sometimes"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][1] == "mobike"
        made = await d.call("POST", "/connections", 201, json={
            "name": "mob", "secret_id": secret["id"], "local_addrs": ["192.0.2.1"]})
        assert made["mobike"] is True
        await d.call("PATCH", f"/connections/{made['id']}", 200, json={"mobike": False})
        assert d.controller.connections["mob"].ike.mobike is False


async def test_daemon_without_listen_starts(env: Settings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No `listen`: the local addresses are read (this crashed: pyroute2's synchronous
    API on the daemon's running loop, "This event loop is already running")."""
    async with daemon(env, None, monkeypatch) as d:
        assert d.controller.connections == {}


def test_file_crls_go_to_the_database_and_follow_the_file(env: Settings, tmp_path: Path) -> None:
    """A connection's `crl` files become CRL rows of its CA (checked against it); a newer
    file replaces its row; `revocation` is stored; read back, the daemon gets both."""
    ca, other = make_ca("File CRL CA"), make_ca("Other CA")
    gw, peer = make_cert(ca, "gw.example"), make_cert(ca, "peer.example")
    files = {"ca.pem": pem(ca.cert), "gw.pem": pem(gw.cert),
             "gw.key": gw.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
             "ca.crl": make_crl(ca).public_bytes(Encoding.DER)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "gw.yaml"
    path.write_text(
        "connections:\n  gw:\n    local_addrs: [192.0.2.1]\n    remote_addrs: [192.0.2.2]\n"
        f"    auth: pubkey\n    certificate: {tmp_path}/gw.pem\n"
        f"    private_key: {tmp_path}/gw.key\n    ca: [{tmp_path}/ca.pem]\n"
        f"    crl: [{tmp_path}/ca.crl]\n    revocation: ifuri\n")
    upgrade(env.database_url)
    db = Database(env.database_url)
    box = SecretBox.from_file(env.secret_key_file)
    try:
        apply_file(db, box, path)
        conf, problems = db.call(read_conf, box)
        assert not problems and conf.connections["gw"].revocation == "ifuri"
        (first,) = conf.connections["gw"].crl_pem
        newer = make_crl(ca, [peer.cert])
        (tmp_path / "ca.crl").write_bytes(newer.public_bytes(Encoding.PEM))
        apply_file(db, box, path)
        conf, _ = db.call(read_conf, box)
        assert conf.connections["gw"].crl_pem == [newer.public_bytes(Encoding.PEM).decode()]
        assert db.call(lambda s: len(list(s.scalars(select(m.Crl))))) == 1
        (tmp_path / "ca.crl").write_bytes(make_crl(other).public_bytes(Encoding.DER))
        with pytest.raises(FileRefused, match="gw: crl: not signed by the connection's CA"):
            apply_file(db, box, path)
        assert first != conf.connections["gw"].crl_pem[0]
    finally:
        db.dispose()


async def test_a_change_through_the_api_is_applied_once_and_others_are_heard(
        env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's own API applies its change at once; the database watcher must not
    apply it a second time (a full reload that made each API write twice as slow under
    load). A change written by another process is still heard by the watcher."""
    monkeypatch.setattr(main, "WATCH_INTERVAL", 0.1)
    path = tmp_path / "gw.yaml"
    path.write_text(TWO)
    async with daemon(env, path, monkeypatch) as d:
        reloads: list[str] = []
        reload = d.controller.changes.reload

        async def counted(conf: cf.DaemonConf) -> list[str]:
            reloads.append("reload")
            return await reload(conf)

        monkeypatch.setattr(d.controller.changes, "reload", counted)
        await d.call("POST", "/secrets", 201, json={"name": "s1", "kind": "psk",
                                                    "value": PSK})
        await asyncio.sleep(0.5)  # five watcher rounds
        assert reloads == ["reload"]
        # another process (no API of this daemon): the watcher applies it
        secret = d.db.call(repo.create_secret, d.box, name="s2", kind=m.SecretKind.PSK,
                           value=PSK.encode(), actor="other")
        assert secret.name == "s2"
        for _ in range(50):
            if len(reloads) == 2:
                break
            await asyncio.sleep(0.05)
        assert reloads == ["reload", "reload"]
