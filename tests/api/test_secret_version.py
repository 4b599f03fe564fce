"""A secret's version: the operator's label for its value, stored, returned (the value
never is), given on create and on replace, validated (422 naming `version`). Clients that
cannot read a value back (the Ansible module) compare versions instead."""

from __future__ import annotations

import httpx
import pytest

PSK1 = "version-test-psk-first"
PSK2 = "version-test-psk-second"


async def _create(client: httpx.AsyncClient, **extra: object) -> httpx.Response:
    return await client.post("/secrets", json={"name": "branch-psk", "kind": "psk",
                                               "value": PSK1, **extra})


async def test_version_is_stored_returned_and_replaced_with_the_value(
        client: httpx.AsyncClient) -> None:
    created = await _create(client, version="2026-12")
    assert created.status_code == 201, created.text
    secret = created.json()
    assert secret["version"] == "2026-12" and "value" not in secret
    listed = (await client.get("/secrets")).json()["data"]
    assert [(s["name"], s["version"]) for s in listed] == [("branch-psk", "2026-12")]
    assert (await client.get(f"/secrets/{secret['id']}")).json()["version"] == "2026-12"

    replaced = await client.put(f"/secrets/{secret['id']}", json={"value": PSK2,
                                                                   "version": "2027-01"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["version"] == "2027-01"
    assert (await client.get(f"/secrets/{secret['id']}")).json()["version"] == "2027-01"
    for response in (created, replaced):
        assert PSK1 not in response.text and PSK2 not in response.text


async def test_a_value_replaced_without_a_version_has_none(client: httpx.AsyncClient) -> None:
    """The old version labelled the old value: it must not describe the new one."""
    secret = (await _create(client, version="3")).json()
    replaced = await client.put(f"/secrets/{secret['id']}", json={"value": PSK2})
    assert replaced.status_code == 200 and replaced.json()["version"] is None


async def test_no_version_is_null_and_an_integer_is_its_text(client: httpx.AsyncClient) -> None:
    plain = await _create(client)
    assert plain.status_code == 201 and plain.json()["version"] is None
    numbered = await client.post("/secrets", json={"name": "n", "kind": "psk", "value": PSK1,
                                                   "version": 3})
    assert numbered.status_code == 201 and numbered.json()["version"] == "3"


@pytest.mark.parametrize("bad", ["", " 1", "v 2", "-1", "x" * 65, "v\u202e2", True, 1.5,
                                 ["1"]])
async def test_bad_version_is_422_naming_the_field(client: httpx.AsyncClient,
                                                   bad: object) -> None:
    r = await _create(client, version=bad)
    assert r.status_code == 422, r.text
    assert {tuple(e["loc"][:2]) for e in r.json()["detail"]} == {("body", "version")}
    assert (await client.get("/secrets")).json()["count"] == 0  # nothing stored
    good = (await _create(client, version="1")).json()
    r = await client.put(f"/secrets/{good['id']}", json={"value": PSK2, "version": bad})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "version"]
    assert (await client.get(f"/secrets/{good['id']}")).json()["version"] == "1"
