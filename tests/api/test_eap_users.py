"""EAP users through the API: write-only like secrets. A password becomes its NT hash at
once; neither the password nor the hash leaves through any response or audit record;
the daemon reads the hashes with its configuration. Connections choose EAP per side."""

from __future__ import annotations

import logging

import httpx
import pytest
from sqlalchemy import select

from tests.api.pki import pubkey_objects
from xfrmctl.config import Settings
from xfrmctl.ike.eap.mschapv2 import nt_hash
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.models import EapUser, Event
from xfrmctl.store.secrets import SecretBox

PASSWORD = "test-only eap password 7f"


async def test_eap_user_is_write_only(client: httpx.AsyncClient, db: Database,
                                      settings: Settings,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    r = await client.post("/eap-users", json={"name": "carol", "password": PASSWORD,
                                              "version": 1})
    assert r.status_code == 201, r.text
    user = r.json()
    assert set(user) == {"id", "name", "enabled", "version", "created_at", "updated_at"}
    r2 = await client.patch(f"/eap-users/{user['id']}", json={"password": PASSWORD + "2"})
    assert r2.status_code == 200 and r2.json()["version"] is None
    new_hash = nt_hash(PASSWORD + "2")
    responses = [r, r2, await client.get(f"/eap-users/{user['id']}"),
                 await client.get("/eap-users"), await client.get("/events")]
    for response in responses:
        assert PASSWORD not in response.text and new_hash.hex() not in response.text.lower()
    assert PASSWORD not in caplog.text and new_hash.hex() not in caplog.text
    row = db.call(lambda s: s.scalar(select(EapUser)))
    assert row is not None and new_hash not in row.nt_hash and PASSWORD.encode() not in row.nt_hash
    box = SecretBox.from_file(settings.secret_key_file)
    assert db.call(repo.eap_user_hashes, box) == {"carol": new_hash}
    for event in db.call(lambda s: list(s.scalars(select(Event)))):
        text = str(event.before) + str(event.after)
        assert PASSWORD not in text and new_hash.hex() not in text
    # disabled: the daemon no longer gets it
    r3 = await client.patch(f"/eap-users/{user['id']}", json={"enabled": False})
    assert r3.status_code == 200 and db.call(repo.eap_user_hashes, box) == {}
    assert (await client.delete(f"/eap-users/{user['id']}")).status_code == 204
    assert (await client.get(f"/eap-users/{user['id']}")).status_code == 404


async def test_eap_user_input_errors_name_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/eap-users", json={"name": "dave"})
    assert r.status_code == 422 and "password" in r.text
    r = await client.post("/eap-users", json={"name": "dave", "nt_hash": "abc"})
    assert r.status_code == 422 and "nt_hash" in r.text
    r = await client.post("/eap-users", json={"name": "dave", "password": "x",
                                              "nt_hash": "00" * 16})
    assert r.status_code == 422
    r = await client.post("/eap-users", json={"name": "dave", "nt_hash": "AB" * 16})
    assert r.status_code == 201, r.text
    r = await client.post("/eap-users", json={"name": "dave", "password": "y"})
    assert r.status_code == 409


async def test_connection_chooses_eap_per_side(client: httpx.AsyncClient) -> None:
    pki = await pubkey_objects(client)
    gateway = {"name": "rw", "auth": "pubkey", "certificate_id": pki["cert"],
               "remote_auth": "eap-mschapv2", "pool": "203.0.113.128/25",
               "dns": ["198.51.100.53"]}
    r = await client.post("/connections", json=gateway)
    assert r.status_code == 201, r.text
    assert r.json()["remote_auth"] == "eap-mschapv2" and r.json()["dns"] == ["198.51.100.53"]
    r = await client.post("/connections", json={**gateway, "name": "both",
                                                "local_auth": "eap-mschapv2"})
    assert r.status_code == 422 and "local_auth" in r.text
    client_conn = {"name": "home", "auth": "pubkey", "ca_id": pki["ca"],
                   "local_auth": "eap-mschapv2", "eap_id": "carol"}
    r = await client.post("/connections", json=client_conn)
    assert r.status_code == 422 and "eap_secret_id" in r.text
    s = await client.post("/secrets", json={"name": "carol-eap", "kind": "eap",
                                            "value": PASSWORD})
    assert s.status_code == 201, s.text
    r = await client.post("/connections", json={**client_conn, "eap_secret_id": s.json()["id"]})
    assert r.status_code == 201, r.text
    assert PASSWORD not in r.text


async def test_connection_chooses_eap_tls(client: httpx.AsyncClient) -> None:
    """EAP-TLS needs our certificate and key on either side (the TLS handshake) and a CA
    for the peer's certificate; no password. An EAP-RADIUS gateway needs only its own."""
    pki = await pubkey_objects(client, "tls")
    gateway = {"name": "rwtls", "auth": "pubkey", "certificate_id": pki["cert"],
               "remote_auth": "eap-tls", "pool": "203.0.113.128/25"}
    r = await client.post("/connections", json=gateway)
    assert r.status_code == 201, r.text
    assert r.json()["remote_auth"] == "eap-tls"
    home = {"name": "hometls", "auth": "pubkey", "ca_id": pki["ca"], "local_auth": "eap-tls"}
    r = await client.post("/connections", json=home)
    assert r.status_code == 422 and "certificate_id" in r.text
    r = await client.post("/connections", json={**home, "certificate_id": pki["cert"]})
    assert r.status_code == 201, r.text
    assert r.json()["local_auth"] == "eap-tls" and r.json()["eap_secret_id"] is None
    r = await client.post("/connections", json={**gateway, "name": "rwradius",
                                                "remote_auth": "eap-radius"})
    assert r.status_code == 201 and r.json()["remote_auth"] == "eap-radius", r.text
    r = await client.post("/connections", json={**home, "name": "md5", "local_auth": "eap-md5"})
    assert r.status_code == 422 and "local_auth" in r.text
