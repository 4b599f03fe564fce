"""Database mode end to end, in memory: REST changes reach a running controller (gateway
A, configured from SQLite) that negotiates with gateway B (configured from a file) over
in-memory datagrams and installs into fake kernels; the recorder writes SAs, counters and
protocol events into the database, and the events reach the SSE bus."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.main import create_app
from tests.support.gateways import A, B, wire
from xfrmctl.config import Settings
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.controller import Controller
from xfrmctl.daemon.dbconfig import DbSource
from xfrmctl.daemon.recorder import Recorder
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.types import Expire
from xfrmctl.port import ActionRejected
from xfrmctl.store import models as m
from xfrmctl.store import repo
from xfrmctl.store.bus import EventBus
from xfrmctl.store.db import Database
from xfrmctl.store.secrets import SecretBox
from xfrmctl.store.tokens import Scope

PSK = "db-mode test-only psk 7f3a"
LAN_A, LAN_B = "198.51.100.0/24", "203.0.113.0/24"


@dataclass
class Setup:
    a: Controller
    b: Controller
    ka: FakeKernel
    kb: FakeKernel
    db: Database
    recorder: Recorder
    bus_queue: asyncio.Queue[dict[str, Any] | None]
    api: httpx.AsyncClient
    bodies: list[str]  # every response body, to check that no secret leaks

    async def settle(self) -> None:
        for _ in range(3):
            for _ in range(20):
                await asyncio.sleep(0)
            await self.a.drain()
            await self.b.drain()
        await self.recorder.flush()

    async def call(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self.api.request(method, url, **kwargs)
        self.bodies.append(response.text)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def rows(self, model: type[m.Base]) -> list[Any]:
        return self.db.call(lambda s: list(s.scalars(select(model))))


def _responder() -> cf.ConnectionConf:
    """Gateway B (file mode): accepts either AES-GCM key size for the child."""
    return cf.ConnectionConf(
        local_addrs=[B], remote_addrs=[A], psk=PSK,  # type: ignore[arg-type]
        ike_proposals="aes128gcm16-prfsha256-x25519",
        children={"lan": cf.ChildConf(local_ts=[LAN_B], remote_ts=[LAN_A],
                                      esp_proposals="aes128gcm16-x25519, aes256gcm16-x25519")})


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/x.db", api_socket=None,
                        secret_key_file=tmp_path / "secret.key")
    db = Database(settings.database_url)
    m.Base.metadata.create_all(db.engine)
    ka, kb = FakeKernel(), FakeKernel()
    a = Controller(cf.DaemonConf(), ka)
    a.config_source = DbSource(db, SecretBox.from_file(settings.secret_key_file)).load
    b = Controller(cf.DaemonConf(connections={"site-a": _responder()}), kb)
    wire(a, b)
    wire(b, a)
    recorder = Recorder(a, db, interval=3600)
    bus = EventBus()
    app = create_app(settings, a, db=db, bus=bus)
    token = db.call(repo.create_token, name="admin", scopes=[Scope.ADMIN], actor=None)[1]
    await b.start()
    await a.start()
    await recorder.start()
    transport = httpx.ASGITransport(app=app)
    async with bus.subscribe() as queue, httpx.AsyncClient(
            transport=transport, base_url="http://test/api/v1",
            headers={"authorization": f"Bearer {token}"}) as api:
        yield Setup(a, b, ka, kb, db, recorder, queue, api, [])
        await a.stop()
        await b.stop()
        await recorder.stop()
    db.dispose()


async def _create_site(s: Setup) -> tuple[int, int]:
    secret = await s.call("POST", "/secrets", json={"name": "site-b-psk", "kind": "psk",
                                                    "value": PSK})
    conn = await s.call("POST", "/connections", json={
        "name": "site-b", "enabled": False, "local_addrs": [A], "remote_addrs": [B],
        "secret_id": secret["id"], "ike_proposals": "aes128gcm16-prfsha256-x25519",
        "start_action": "start"})
    child = await s.call("POST", f"/connections/{conn['id']}/children", json={
        "name": "lan", "local_ts": [LAN_A], "remote_ts": [LAN_B],
        "esp_proposals": "aes128gcm16-x25519"})
    await s.settle()
    assert not s.ka.sas  # disabled: not loaded
    await s.call("PATCH", f"/connections/{conn['id']}", json={"enabled": True})
    await s.settle()
    return conn["id"], child["id"]


def _spis(k: FakeKernel) -> set[str]:
    return {f"{e.spec.spi:08x}" for e in k.sas.values()}


async def test_rest_changes_reach_the_daemon_and_the_database(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = setup
    conn_id, child_id = await _create_site(s)

    (sa,) = (await s.call("GET", "/child-sas"))["data"]
    assert (sa["connection_id"], sa["child_id"]) == (conn_id, child_id)
    assert {sa["spi_in"], sa["spi_out"]} == _spis(s.ka) == _spis(s.kb)
    (row,) = s.rows(m.ChildSaRecord)
    assert row.spi_in == sa["spi_in"] and row.child_id == child_id
    assert row.encryption == "AES_GCM_16_128" and row.local_ts == [LAN_A]
    (ike,) = s.rows(m.IkeSaRecord)
    assert ike.connection_id == conn_id and ike.state == "ESTABLISHED" and ike.initiator

    # A change that negotiates nothing (DPD) keeps the tunnel as it is. (mobike was the
    # example while MOBIKE did not exist; now it is negotiated: a reauthentication.)
    await s.call("PATCH", f"/connections/{conn_id}", json={"dpd_delay": 30})
    await s.settle()
    assert _spis(s.ka) == {sa["spi_in"], sa["spi_out"]}

    # A change of the child replaces its CHILD_SA (new one first) on the same IKE SA; the
    # old inbound SAs stay a while for packets in flight (delete_rekeyed_delay).
    await s.call("PATCH", f"/children/{child_id}", json={"esp_proposals": "aes256gcm16-x25519"})
    await s.settle()
    (new,) = (await s.call("GET", "/child-sas"))["data"]
    assert new["spi_in"] != sa["spi_in"] and new["encryption"] == "AES_GCM_16_256"
    assert new["ike_sa_id"] == sa["ike_sa_id"]
    assert _spis(s.ka) == {new["spi_in"], new["spi_out"], sa["spi_in"]}
    assert _spis(s.kb) == {new["spi_in"], new["spi_out"], sa["spi_out"]}
    assert [r.encryption for r in s.rows(m.ChildSaRecord)] == ["AES_GCM_16_256"]

    # Delete: torn down in both kernels, the recorded SAs are gone.
    await s.call("DELETE", f"/connections/{conn_id}")
    await s.settle()
    assert not s.ka.sas and not s.ka.policies and not s.kb.sas
    assert (await s.call("GET", "/child-sas"))["count"] == 0
    assert not s.rows(m.IkeSaRecord) and not s.rows(m.ChildSaRecord)

    events = (await s.call("GET", "/events", params={"kind": "protocol", "limit": 500}))["data"]
    types = [e["type"] for e in reversed(events)]
    # one IKE SA all along: the child change replaced the CHILD_SA only
    assert types.count("IkeSaUp") == 1 and types.count("ChildSaNegotiated") == 2
    assert "IkeSaDown" in types and "ChildSaDeleted" in types
    assert all(e["connection_id"] == conn_id for e in events if e["type"] == "IkeSaUp")
    streamed = []
    while not s.bus_queue.empty():
        item = s.bus_queue.get_nowait()
        assert item is not None
        streamed.append(item["type"])
    assert [t for t in streamed if t in types] == types  # the SSE bus saw them, in order

    db_dump = repr([repo.snapshot(e) for e in s.rows(m.Event)])
    for text in (*s.bodies, caplog.text, db_dump):
        assert PSK not in text


async def test_counters_are_copied_from_the_kernel(setup: Setup) -> None:
    await _create_site(setup)
    (sa,) = await setup.a.list_child_sas()
    (inbound,) = [e.spec.id for e in setup.ka.sas.values() if e.spec.spi == sa.spi_in]
    setup.ka.account(inbound, 1500, packets=3)
    assert await setup.recorder.record_counters() == 1
    (row,) = setup.rows(m.ChildSaRecord)
    assert (row.bytes_in, row.packets_in, row.bytes_out) == (1500, 3, 0)
    assert await setup.recorder.record_counters() == 0  # unchanged: nothing written


async def test_initiate_uses_database_ids(setup: Setup) -> None:
    s = setup
    conn_id, child_id = await _create_site(s)
    await s.call("POST", f"/connections/{conn_id}/terminate")
    await s.settle()
    assert not s.ka.sas
    response = await s.api.post(f"/connections/{conn_id}/initiate",
                                params={"child_id": child_id + 1})
    assert response.status_code == 404  # no such child of this connection
    await s.call("POST", f"/connections/{conn_id}/initiate", params={"child_id": child_id})
    await s.settle()
    assert len(s.ka.sas) == 2
    status = (await s.call("GET", "/status"))["connections"]
    assert [(c["id"], c["state"]) for c in status] == [(conn_id, "up")]


async def test_invalid_connection_is_left_out_and_others_load(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    s = setup
    body = {"name": "no-secret", "local_addrs": [A], "remote_addrs": [B]}
    refused = await s.api.post("/connections", json=body)
    assert refused.status_code == 422  # the API checks it when it is written
    # stored anyway (an older database, a direct write): only it is left out
    bad = {"id": s.db.call(lambda session: repo.create(session, m.Connection, body,
                                                       actor=None).id)}
    await s.a.config_changed("connection", bad["id"], "created")
    await s.settle()
    assert "connection no-secret not loaded: connection: Value error, auth psk needs psk" \
        in caplog.text
    conn_id, _ = await _create_site(s)
    status = (await s.call("GET", "/status"))["connections"]
    assert [(c["id"], c["state"]) for c in status] == [(bad["id"], "down"), (conn_id, "up")]
    events = (await s.call("GET", "/events", params={"type": "ConnectionNotLoaded"}))["data"]
    assert [e["connection_id"] for e in events] == [bad["id"]]  # once, not on every reload


async def test_file_mode_refuses_config_changes() -> None:
    controller = Controller(cf.DaemonConf(), FakeKernel())
    with pytest.raises(ActionRejected, match="SIGHUP"):
        await controller.config_changed("connection", 1, "created")


async def test_rekeys_keep_the_records_current(setup: Setup) -> None:
    s = setup
    conn_id, _ = await _create_site(s)
    (child,) = s.rows(m.ChildSaRecord)
    inbound = next(e.spec.id for e in s.ka.sas.values() if f"{e.spec.spi:08x}" == child.spi_in)
    s.ka.inject(Expire(inbound, hard=False))
    await s.settle()
    (rekeyed,) = s.rows(m.ChildSaRecord)  # the replaced CHILD_SA's row is gone
    assert rekeyed.spi_in != child.spi_in
    # (the replaced inbound SA lingers in the kernel for packets still on the wire)
    assert {rekeyed.spi_in, rekeyed.spi_out, child.spi_in} == _spis(s.ka)

    (old_ike,) = s.rows(m.IkeSaRecord)
    await s.call("POST", f"/ike-sas/{old_ike.id}/rekey")
    await s.settle()
    (new_ike,) = s.rows(m.IkeSaRecord)
    assert new_ike.id != old_ike.id and new_ike.spi_i != old_ike.spi_i
    (moved,) = s.rows(m.ChildSaRecord)
    assert (moved.id, moved.ike_sa_id) == (rekeyed.id, new_ike.id)  # kept, under the new
    events = (await s.call("GET", "/events", params={"type": "IkeSaRekeyed"}))["data"]
    assert [e["connection_id"] for e in events] == [conn_id]
