"""Secrets are write-only and encrypted at rest; tokens and scopes gate every call."""

from __future__ import annotations

import logging
import stat
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from tests.api.pki import pubkey_objects
from tests.support.api_app import make_token, psk_secret
from xfrmctl.config import Settings
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.models import ApiToken, Event, Secret
from xfrmctl.store.secrets import SecretBox
from xfrmctl.store.tokens import Scope

PSK = "correct-horse-battery-staple-42"


async def test_secret_is_write_only(client: httpx.AsyncClient, db: Database,
                                    settings: Settings,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    r = await client.post("/secrets", json={"name": "gw2-psk", "kind": "psk", "value": PSK})
    assert r.status_code == 201
    secret_id = r.json()["id"]
    r2 = await client.put(f"/secrets/{secret_id}", json={"value": PSK + "-new"})
    assert r2.status_code == 200
    responses = [r, r2, await client.get(f"/secrets/{secret_id}"), await client.get("/secrets"),
                 await client.get("/events")]
    for response in responses:
        assert PSK not in response.text
    assert "value" not in r.json()
    assert PSK not in caplog.text
    # at rest: encrypted, and the key file is 0400
    row = db.call(lambda s: s.get(Secret, secret_id))
    assert row is not None and PSK.encode() not in row.ciphertext
    assert stat.S_IMODE(settings.secret_key_file.stat().st_mode) == 0o400
    box = SecretBox.from_file(settings.secret_key_file)
    assert db.call(repo.reveal_secret, box, secret_id) == (PSK + "-new").encode()
    for event in db.call(lambda s: list(s.scalars(select(Event)))):
        assert PSK not in str(event.before) + str(event.after)


async def test_secret_kind_must_fit_auth(client: httpx.AsyncClient) -> None:
    pki = await pubkey_objects(client)
    psk = await psk_secret(client)
    r = await client.post("/connections", json={"name": "c", "auth": "psk",
                                                "secret_id": pki["key"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "secret_id"]
    r = await client.post("/connections", json={
        "name": "c", "auth": "pubkey", "secret_id": psk, "certificate_id": pki["cert"],
        "ca_id": pki["ca"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "secret_id"]
    r = await client.post("/connections", json={
        "name": "c", "auth": "pubkey", "secret_id": pki["key"],
        "certificate_id": pki["cert"], "ca_id": pki["ca"]})
    assert r.status_code == 201, r.text
    assert (await client.delete(f"/secrets/{pki['key']}")).status_code == 409


async def test_scopes(client: httpx.AsyncClient, anon: httpx.AsyncClient,
                      tokens: dict[Scope, str]) -> None:
    conn = (await client.post("/connections", json={
        "name": "c", "secret_id": await psk_secret(client)})).json()

    def auth(scope: Scope) -> dict[str, str]:
        return {"authorization": f"Bearer {tokens[scope]}"}

    base = "/api/v1"
    assert (await anon.get(f"{base}/connections")).status_code == 401
    bogus = {"authorization": "Bearer xfc_not-a-token"}
    assert (await anon.get(f"{base}/connections", headers=bogus)).status_code == 401
    assert (await anon.get(f"{base}/connections", headers=auth(Scope.READ))).status_code == 200
    r = await anon.post(f"{base}/peers", json={"name": "p"}, headers=auth(Scope.READ))
    assert r.status_code == 403
    r = await anon.post(f"{base}/connections/{conn['id']}/initiate", headers=auth(Scope.READ))
    assert r.status_code == 403
    r = await anon.post(f"{base}/connections/{conn['id']}/initiate",
                        headers=auth(Scope.OPERATE))
    assert r.status_code == 202
    r = await anon.post(f"{base}/peers", json={"name": "p"}, headers=auth(Scope.OPERATE))
    assert r.status_code == 403
    assert (await anon.get(f"{base}/tokens", headers=auth(Scope.OPERATE))).status_code == 403
    assert (await anon.get("/healthz")).status_code == 200
    assert (await anon.get("/metrics")).status_code == 401


async def test_token_lifecycle(client: httpx.AsyncClient, anon: httpx.AsyncClient,
                               db: Database) -> None:
    r = await client.post("/tokens", json={"name": "ci", "scopes": ["read"]})
    assert r.status_code == 201
    created = r.json()
    plaintext = created["token"]
    assert plaintext.startswith(created["prefix"])
    headers = {"authorization": f"Bearer {plaintext}"}
    assert (await anon.get("/api/v1/status", headers=headers)).status_code == 200
    listing = await client.get("/tokens")
    assert plaintext not in listing.text and "token_hash" not in listing.text
    assert {t["name"] for t in listing.json()["data"]} >= {"ci", "t-admin"}
    # only the hash is stored
    stored = db.call(lambda s: repo.get(s, ApiToken, created["id"]).token_hash)
    assert stored != plaintext and len(stored) == 64
    assert (await client.delete(f"/tokens/{created['id']}")).status_code == 204
    assert (await anon.get("/api/v1/status", headers=headers)).status_code == 401
    assert (await client.delete(f"/tokens/{created['id']}")).status_code == 409


async def test_expired_token_is_refused(anon: httpx.AsyncClient, db: Database) -> None:
    _, plaintext = db.call(repo.create_token, name="old", scopes=[Scope.READ],
                           expires_at=datetime.now(UTC) - timedelta(seconds=1), actor=None)
    live = make_token(db, "live", Scope.READ)
    r = await anon.get("/api/v1/status", headers={"authorization": f"Bearer {plaintext}"})
    assert r.status_code == 401
    r = await anon.get("/api/v1/status", headers={"authorization": f"Bearer {live}"})
    assert r.status_code == 200
