"""CRLs through the API (/crls): stored only when signed by their CA, listed with what
they revoke, replaced by newer ones, and handed to the daemon with the connections of
that CA (with each connection's revocation policy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI

from tests.api.pki import cert_pem, key_pem
from tests.support.fake_controller import FakeController
from tests.support.pki import make_ca, make_cert, make_crl
from xfrmctl.daemon.dbconfig import read_conf
from xfrmctl.store.db import Database


def crl_pem(crl: object) -> str:
    return crl.public_bytes(Encoding.PEM).decode()  # type: ignore[attr-defined]


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [str(e["loc"][-1]) for e in response.json()["detail"]]


async def add_ca(client: httpx.AsyncClient, name: str = "root") -> tuple[object, int]:
    ca = make_ca(f"{name} CA")
    r = await client.post("/cas", json={"name": name, "pem": cert_pem(ca)})
    assert r.status_code == 201, r.text
    return ca, r.json()["id"]


async def test_crl_upload_list_replace_delete(client: httpx.AsyncClient,
                                              controller: FakeController) -> None:
    ca, ca_id = await add_ca(client)
    peer = make_cert(ca, "peer.example")  # type: ignore[arg-type]
    old = make_crl(ca, [], last_update=datetime.now(UTC) - timedelta(days=1))  # type: ignore[arg-type]
    r = await client.post("/crls", json={"name": "root-crl", "ca_id": ca_id,
                                         "pem": crl_pem(old)})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["revoked"] == 0 and created["issuer"] == "CN=root CA,O=xfrmctl test"
    assert created["next_update"] is not None
    assert ("crl", created["id"], "created") in controller.changes
    newer = make_crl(ca, [peer.cert])  # type: ignore[arg-type]
    r = await client.patch(f"/crls/{created['id']}", json={"pem": crl_pem(newer)})
    assert r.status_code == 200, r.text
    assert r.json()["revoked"] == 1 and r.json()["this_update"] > created["this_update"]
    r = await client.get("/crls")
    assert r.json()["count"] == 1 and r.json()["data"][0]["name"] == "root-crl"
    r = await client.delete(f"/cas/{ca_id}")
    assert r.status_code == 409, r.text  # the CA's CRL must go first
    assert (await client.delete(f"/crls/{created['id']}")).status_code == 204
    assert (await client.get(f"/crls/{created['id']}")).status_code == 404
    assert (await client.delete(f"/cas/{ca_id}")).status_code == 204


async def test_crl_not_signed_by_its_ca_is_refused(client: httpx.AsyncClient) -> None:
    _, ca_id = await add_ca(client, "one")
    other, _ = await add_ca(client, "two")
    r = await client.post("/crls", json={"name": "x", "ca_id": ca_id,
                                         "pem": crl_pem(make_crl(other))})  # type: ignore[arg-type]
    assert fields(r) == ["pem"] and "not signed by CA 'one'" in r.text
    r = await client.post("/crls", json={"name": "x", "ca_id": ca_id, "pem": "garbage"})
    assert fields(r) == ["pem"] and "not a CRL" in r.text
    r = await client.post("/crls", json={"name": "x", "ca_id": 999,
                                         "pem": crl_pem(make_crl(other))})  # type: ignore[arg-type]
    assert r.status_code in (404, 422), r.text
    assert "ca_id" in r.text
    assert (await client.get("/crls")).json()["count"] == 0


async def test_daemon_gets_the_cas_crls_and_the_policy(client: httpx.AsyncClient,
                                                        app: FastAPI, db: Database) -> None:
    ca, ca_id = await add_ca(client)
    gw = make_cert(ca, "gw.example")  # type: ignore[arg-type]
    key = await client.post("/secrets", json={"name": "k", "kind": "private_key",
                                              "value": key_pem(gw)})
    cert = await client.post("/certificates", json={
        "name": "gw", "pem": cert_pem(gw), "ca_id": ca_id, "key_secret_id": key.json()["id"]})
    r = await client.post("/connections", json={
        "name": "pk", "auth": "pubkey", "certificate_id": cert.json()["id"],
        "ca_id": ca_id, "revocation": "strict"})
    assert r.status_code == 201, r.text
    assert r.json()["revocation"] == "strict"
    crl = make_crl(ca)  # type: ignore[arg-type]
    await client.post("/crls", json={"name": "c", "ca_id": ca_id, "pem": crl_pem(crl)})
    conf, problems = db.call(read_conf, app.state.services.box)
    assert not problems
    conn = conf.connections["pk"]
    assert conn.revocation == "strict" and conn.crl_pem == [crl_pem(crl)]
    r = await client.patch(f"/connections/{r.json()['id']}", json={"revocation": "maybe"})
    assert fields(r) == ["revocation"]
