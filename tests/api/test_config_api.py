"""Desired-state CRUD: status codes, validation naming the field, audit, live notification."""

from __future__ import annotations

import httpx
import pytest

from tests.support.api_app import psk_secret
from tests.support.fake_controller import FakeController

CONN = {"name": "gw2", "local_addrs": ["192.0.2.1"], "remote_addrs": ["198.51.100.1"],
        "local_id": "gw1.example", "remote_id": "gw2.example", "secret_id": 1}


@pytest.fixture(autouse=True)
async def _psk(client: httpx.AsyncClient) -> None:
    assert await psk_secret(client) == CONN["secret_id"]


def fields(response: httpx.Response) -> set[str]:
    """The field names a 422 response complains about."""
    assert response.status_code == 422, response.text
    return {str(e["loc"][-1]) for e in response.json()["detail"]}


async def test_peer_crud_and_pagination(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        r = await client.post("/peers", json={"name": f"p{i}", "addresses": ["203.0.113.7"]})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    page = (await client.get("/peers", params={"offset": 1, "limit": 2})).json()
    assert page["count"] == 5
    assert [p["name"] for p in page["data"]] == ["p1", "p2"]
    r = await client.patch(f"/peers/{ids[0]}", json={"description": "primary"})
    assert r.json()["description"] == "primary" and r.json()["name"] == "p0"
    assert (await client.delete(f"/peers/{ids[0]}")).status_code == 204
    assert (await client.get(f"/peers/{ids[0]}")).status_code == 404
    assert (await client.patch(f"/peers/{ids[0]}", json={"description": "x"})).status_code == 404
    assert (await client.delete(f"/peers/{ids[0]}")).status_code == 404


async def test_conflicts(client: httpx.AsyncClient) -> None:
    peer = (await client.post("/peers", json={"name": "p"})).json()
    assert (await client.post("/peers", json={"name": "p"})).status_code == 409
    r = await client.post("/connections", json={**CONN, "peer_id": peer["id"]})
    assert r.status_code == 201
    # the peer is still referenced by the connection
    r = await client.delete(f"/peers/{peer['id']}")
    assert r.status_code == 409
    assert "in use" in r.json()["detail"]
    other = (await client.post("/peers", json={"name": "q"})).json()
    assert (await client.patch(f"/peers/{other['id']}", json={"name": "p"})).status_code == 409


async def test_validation_names_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/connections", json={**CONN, "remote_addrs": ["not an address!"]})
    assert fields(r) == {"0"} and r.json()["detail"][0]["loc"][:3] == [
        "body", "remote_addrs", 0]
    r = await client.post("/connections", json={**CONN, "ike_proposals": "aes128-bogus"})
    assert fields(r) == {"ike_proposals"}
    assert "bogus" in r.json()["detail"][0]["msg"]
    r = await client.post("/connections", json={**CONN, "peer_id": 4242})
    assert fields(r) == {"peer_id"}
    r = await client.post("/connections", json={**CONN, "local_port": 70000})
    assert fields(r) == {"local_port"}
    r = await client.post("/connections", json={**CONN, "unknown_option": 1})
    assert fields(r) == {"unknown_option"}
    conn = (await client.post("/connections", json=CONN)).json()
    assert fields(await client.patch(f"/connections/{conn['id']}", json={"name": None})) == {
        "name"}
    # a connection is addressed by id or name: "0" is neither here, "-1" cannot be either
    assert (await client.get("/connections/0")).status_code == 404
    assert (await client.get("/connections/-1")).status_code == 422


async def test_children_rules(client: httpx.AsyncClient) -> None:
    conn = (await client.post("/connections", json=CONN)).json()
    url = f"/connections/{conn['id']}/children"
    base = {"name": "net", "local_ts": ["192.0.2.0/24"], "remote_ts": ["198.51.100.0/24"]}
    assert fields(await client.post(url, json={**base, "local_ts": ["192.0.2.1/24"]})) == {"0"}
    assert fields(await client.post(url, json={**base, "interface_kind": "xfrmi"})) == {"if_id"}
    assert fields(await client.post(url, json={**base, "routes": ["203.0.113.0/24"]})) == {
        "routes"}
    assert fields(await client.post(url, json={**base, "rekey_time": 4000,
                                               "life_time": 3600})) == {"rekey_time"}
    assert fields(await client.post(url, json={**base, "esp_proposals": "aes128-nope"})) == {
        "esp_proposals"}
    r = await client.post(url, json={**base, "interface_kind": "xfrmi", "if_id": 42,
                                     "interface_name": "ipsec42",
                                     "interface_addresses": ["203.0.113.1/30"],
                                     "routes": ["198.51.100.0/24"], "mtu": 1400})
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["connection_id"] == conn["id"] and child["if_id"] == 42
    assert (await client.post(url, json={**base, "interface_kind": None})).status_code == 409
    # switching to policy-based while routes remain is refused, naming the field
    r = await client.patch(f"/children/{child['id']}", json={"interface_kind": None})
    assert fields(r) == {"interface_name"}
    listed = (await client.get("/children", params={"connection_id": conn["id"]})).json()
    assert listed["count"] == 1
    assert (await client.post("/connections/999/children", json=base)).status_code == 404
    # deleting the connection removes its children
    assert (await client.delete(f"/connections/{conn['id']}")).status_code == 204
    assert (await client.get(f"/children/{child['id']}")).status_code == 404


async def test_changes_reach_the_daemon(client: httpx.AsyncClient,
                                        controller: FakeController) -> None:
    conn = (await client.post("/connections", json=CONN)).json()
    await client.patch(f"/connections/{conn['id']}", json={"dpd_delay": 30})
    await client.delete(f"/connections/{conn['id']}")
    assert controller.changes == [("secret", CONN["secret_id"], "created"),
                                  ("connection", conn["id"], "created"),
                                  ("connection", conn["id"], "updated"),
                                  ("connection", conn["id"], "deleted")]


async def test_audit_trail(client: httpx.AsyncClient) -> None:
    conn = (await client.post("/connections", json=CONN)).json()
    await client.patch(f"/connections/{conn['id']}", json={"dpd_delay": 30})
    events = (await client.get("/events", params={"kind": "audit",
                                                  "connection_id": conn["id"]})).json()
    assert [e["type"] for e in events["data"]] == ["connections.update", "connections.create"]
    update = events["data"][0]
    assert update["actor"] == "token:t-admin"
    assert update["before"]["dpd_delay"] == 0 and update["after"]["dpd_delay"] == 30
    only = (await client.get("/events", params={"type": "connections.create"})).json()
    assert only["count"] == 1


async def test_proposals(client: httpx.AsyncClient) -> None:
    r = await client.post("/proposals", json={"name": "modern", "protocol": "ike",
                                              "text": "aes128gcm16-prfsha256-x25519"})
    assert r.status_code == 201
    # valid for ESP is not valid for IKE (no PRF, no key exchange)
    r = await client.post("/proposals", json={"name": "esp", "protocol": "ike",
                                              "text": "aes128gcm16"})
    assert fields(r) == {"text"}
    r = await client.post("/proposals", json={"name": "esp", "protocol": "esp",
                                              "text": "aes128gcm16"})
    assert r.status_code == 201
    assert (await client.get("/proposals", params={"protocol": "esp"})).json()["count"] == 1
