"""Live state and actions through the Controller port; status, metrics, kernel view."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx
from fastapi import FastAPI

from api.main import create_app
from tests.support.api_app import make_token, psk_secret
from tests.support.fake_controller import FakeController, child_sa, ike_sa
from xfrmctl.config import Settings
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.controller import Controller
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.types import REQID_MIN, Algorithm, Mode, Proto, SaSpec, Selector
from xfrmctl.port import ConnectionState, DownReason, Target
from xfrmctl.store.db import Database
from xfrmctl.store.tokens import Scope


async def _conn(client: httpx.AsyncClient, name: str = "gw2") -> int:
    secret_id = await psk_secret(client, f"{name}-psk")
    r = await client.post("/connections", json={"name": name, "secret_id": secret_id})
    assert r.status_code == 201
    return int(r.json()["id"])


async def test_sa_lists_filters_and_format(client: httpx.AsyncClient,
                                           controller: FakeController) -> None:
    controller.ike += [ike_sa(1, "ike-1"), ike_sa(2, "ike-2")]
    controller.children += [child_sa(1, "child-1", "ike-1"), child_sa(2, "child-2", "ike-2")]
    listed = (await client.get("/ike-sas")).json()
    assert listed["count"] == 2
    one = (await client.get("/ike-sas", params={"connection_id": 2})).json()
    assert [s["id"] for s in one["data"]] == ["ike-2"]
    assert one["data"][0]["spi_i"] == "1122334455667788"
    assert (await client.get("/ike-sas", params={"state": "CONNECTING"})).json()["count"] == 0
    child = (await client.get("/child-sas/child-1")).json()
    assert child["spi_in"] == "c0ffee01"
    assert child["traffic"] == {"bytes_in": 1500, "bytes_out": 3000, "packets_in": 10,
                                "packets_out": 20, "last_used_at": "2025-01-01T12:00:00Z"}
    assert (child["reqid"], child["proposal"]) == (16385, "aes256gcm16")
    assert child["local_ts"] == ["192.0.2.0/24"]
    by_ike = (await client.get("/child-sas", params={"ike_sa_id": "ike-2"})).json()
    assert [c["id"] for c in by_ike["data"]] == ["child-2"]
    assert (await client.get("/ike-sas/nope")).status_code == 404
    policies = (await client.get("/policies", params={"connection_id": 1})).json()
    assert policies["count"] == 3


async def test_actions(client: httpx.AsyncClient, controller: FakeController) -> None:
    conn = await _conn(client)
    r = await client.post(f"/connections/{conn}/initiate")
    assert r.status_code == 202 and r.json() == {"action": "initiate", "target": "connection",
                                                  "id": str(conn)}
    assert controller.calls[-1] == ("initiate", (conn, None))
    await client.post(f"/connections/{conn}/rekey")
    assert controller.calls[-1] == ("rekey", Target("connection", str(conn)))
    await client.post(f"/connections/{conn}/terminate")
    assert controller.calls[-1] == ("terminate", Target("connection", str(conn)))
    assert (await client.post("/connections/9999/initiate")).status_code == 404
    sa_id = controller.ike[0].id
    assert (await client.post(f"/ike-sas/{sa_id}/rekey")).status_code == 202
    assert controller.calls[-1] == ("rekey", Target("ike_sa", sa_id))
    assert (await client.post("/ike-sas/unknown/terminate")).status_code == 404
    assert (await client.post("/child-sas/unknown/rekey")).status_code == 404
    controller.reject = True
    assert (await client.post(f"/ike-sas/{sa_id}/terminate")).status_code == 409
    events = (await client.get("/events", params={"type": "ike_sa.rekey"})).json()
    assert events["count"] == 1 and events["data"][0]["actor"] == "token:t-admin"


async def test_status_desired_vs_actual(client: httpx.AsyncClient,
                                        controller: FakeController) -> None:
    up, down, unloaded = (await _conn(client, "a"), await _conn(client, "b"),
                          await _conn(client, "c"))
    controller.set_state(up, ConnectionState.UP)
    controller.set_state(down, ConnectionState.DOWN, DownReason.AUTHENTICATION_FAILED)
    controller.not_loaded["c"] = "psk_file /etc/xfrmctl/c.psk: No such file"
    status = (await client.get("/status")).json()
    assert status["daemon"] is True and status["counters"]["failures"] == {"AUTH_FAILED": 2}
    by_name = {c["name"]: c for c in status["connections"]}
    assert by_name["a"]["state"] == "up"
    assert (by_name["b"]["state"], by_name["b"]["reason"]) == ("down", "AUTHENTICATION_FAILED")
    assert (by_name["c"]["state"], by_name["c"]["reason"]) == ("down", "not loaded")
    assert by_name["c"]["detail"]["message"] == "psk_file /etc/xfrmctl/c.psk: No such file"
    assert unloaded == by_name["c"]["id"]


async def test_without_daemon(settings: Settings, db: Database) -> None:
    app = create_app(settings, None, db=db)
    token = make_token(db, "r", Scope.ADMIN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test/api/v1",
                                 headers={"authorization": f"Bearer {token}"}) as client:
        await _conn(client)  # desired state works without the daemon
        # SAs: the fleet view, what the gateways recorded in the database (none here)
        assert (await client.get("/ike-sas")).json() == {"data": [], "count": 0}
        assert (await client.post("/connections/1/initiate")).status_code == 503
        status = (await client.get("/status")).json()
        assert status["daemon"] is False
        assert status["connections"][0]["reason"] == "daemon not running"
        metrics = await client.get("http://test/metrics")
        assert "xfrmctl_daemon_up 0.0" in metrics.text


async def test_metrics(client: httpx.AsyncClient, controller: FakeController) -> None:
    controller.ike.append(ike_sa(1))
    controller.children.append(child_sa(1))
    controller.set_state(1, ConnectionState.UP)
    text = (await client.get("http://test/metrics")).text
    assert 'xfrmctl_ike_sas{state="ESTABLISHED"} 1.0' in text
    assert 'xfrmctl_failures_total{reason="AUTH_FAILED"} 2.0' in text
    assert 'xfrmctl_child_sa_bytes_total{child_sa="child-1",direction="out",name="net"} 3000.0' \
        in text
    assert "xfrmctl_kernel_install_seconds_count 4.0" in text
    assert 'xfrmctl_connections{state="up"} 1.0' in text


async def test_kernel_view_has_one_typed_shape_and_hides_keys(
        settings: Settings, db: Database, tmp_path: Path) -> None:
    """/kernel is served through the controller's port only (the app is never handed a
    kernel; it used to dump raw kernel dataclasses when it was): typed JSON, no keys."""
    kernel = FakeKernel()
    key = bytes(range(36))
    await kernel.add_sa(SaSpec(
        src=ipaddress.ip_address("192.0.2.1"), dst=ipaddress.ip_address("198.51.100.1"),
        spi=0xC0FFEE01, reqid=REQID_MIN, proto=Proto.ESP, mode=Mode.TUNNEL,
        selector=Selector(ipaddress.ip_network("192.0.2.0/24"),
                          ipaddress.ip_network("198.51.100.0/24")),
        aead=Algorithm("rfc4106(gcm(aes))", key, 128)))
    token = make_token(db, "r", Scope.READ)
    app: FastAPI = create_app(settings, Controller(cf.DaemonConf(), kernel), db=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test/api/v1",
                                 headers={"authorization": f"Bearer {token}"}) as client:
        r = await client.get("/kernel")
    assert r.status_code == 200
    assert key.hex() not in r.text and str(list(key)) not in r.text
    (state,) = r.json()["states"]
    assert state["spi"] == "c0ffee01" and state["reqid"] == REQID_MIN
    assert state["algorithms"] == {"aead": {"name": "rfc4106(gcm(aes))", "bits": 288}}
    app = create_app(settings, None, db=db)  # no daemon: no kernel view
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test/api/v1",
                                 headers={"authorization": f"Bearer {token}"}) as client:
        assert (await client.get("/kernel")).status_code == 503


async def test_healthz(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/healthz")
    assert r.json() == {"status": "ok", "database": True, "daemon": True}
