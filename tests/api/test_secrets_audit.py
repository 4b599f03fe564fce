"""The secrets audit: every operation of the OpenAPI schema is called, with good ids and
with bodies stuffed with secrets; no PSK, private key or token made in the test appears
in any response (bar the one response that creates a token), log record, event,
metric or the event stream."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI
from sqlalchemy import select

from tests.api.pki import cert_pem, key_pem
from tests.support.fake_controller import FakeController, child_sa, ike_sa
from tests.support.pki import make_ca, make_cert, make_crl
from xfrmctl.ike.eap.mschapv2 import nt_hash
from xfrmctl.store.db import Database
from xfrmctl.store.models import Event
from xfrmctl.store.tokens import Scope

PSK = "audit-psk-7f3e9c1b5a"
PSK2 = "audit-psk-replaced-2d8e4f"
METHOD_ORDER = {"get": 0, "post": 1, "put": 1, "patch": 1, "delete": 2}


EAP_PASSWORD = "audit test-only eap password"


def _key_fingerprints(pem: str) -> list[str]:
    """The whole PEM and each base64 line of it (a leak of a part is a leak)."""
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return [pem, *lines]


async def _setup(client: httpx.AsyncClient) -> dict[str, Any]:
    ca = make_ca("Audit root")
    gw = make_cert(ca, "gw.example")
    ids: dict[str, Any] = {}

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await client.post(path, json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    ids["peer_id"] = (await post("/peers", {"name": "p"}))["id"]
    ids["secret_id"] = (await post("/secrets", {"name": "psk", "kind": "psk",
                                                "value": PSK}))["id"]
    key = await post("/secrets", {"name": "key", "kind": "private_key", "value": key_pem(gw)})
    ids["ca_id"] = (await post("/cas", {"name": "ca", "pem": cert_pem(ca)}))["id"]
    crl = make_crl(ca).public_bytes(Encoding.PEM).decode()
    ids["crl_id"] = (await post("/crls", {"name": "crl", "ca_id": ids["ca_id"],
                                          "pem": crl}))["id"]
    ids["certificate_id"] = (await post("/certificates", {
        "name": "cert", "pem": cert_pem(gw), "ca_id": ids["ca_id"],
        "key_secret_id": key["id"]}))["id"]
    ids["connection_id"] = (await post("/connections", {
        "name": "c", "secret_id": ids["secret_id"], "remote_addrs": ["198.51.100.1"]}))["id"]
    await post("/connections", {"name": "pk", "auth": "pubkey",
                                "certificate_id": ids["certificate_id"]})
    ids["child_id"] = (await post(f"/connections/{ids['connection_id']}/children",
                                  {"name": "net"}))["id"]
    ids["proposal_id"] = (await post("/proposals", {"name": "pr", "protocol": "esp",
                                                    "text": "aes128gcm16"}))["id"]
    created = await post("/tokens", {"name": "ci", "scopes": ["read"]})
    ids["token_id"] = created["id"]
    ids["sa_id"] = "ike-1"
    ids["name"] = "gw-1"  # /gateways/{name}: none registered (404)
    ids["user_id"] = (await post("/eap-users", {"name": "u", "password": EAP_PASSWORD}))["id"]
    ids["secrets"] = [PSK, PSK2, created["token"], *_key_fingerprints(key_pem(gw)),
                      EAP_PASSWORD, nt_hash(EAP_PASSWORD).hex()]
    return ids


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    ops = [(method, path) for path, item in app.openapi()["paths"].items()
           for method in item]
    return sorted(ops, key=lambda op: METHOD_ORDER[op[0]])


def _path(path: str, ids: dict[str, Any]) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "sa_id":
            return "ike-1" if "/ike-sas/" in path else "child-1"
        return str(ids[name])
    return re.sub(r"\{(\w+)\}", fill, path)


async def test_no_secret_leaves_through_any_route(
        app: FastAPI, client: httpx.AsyncClient, anon: httpx.AsyncClient,
        controller: FakeController, db: Database, tokens: dict[Scope, str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ids = await _setup(client)
    controller.ike.append(ike_sa(ids["connection_id"]))
    controller.children.append(child_sa(ids["connection_id"]))
    secrets = [*ids["secrets"], *tokens.values()]
    stuffed = {"name": PSK, "value": PSK, "psk": PSK, "pem": secrets[3], "token": PSK,
               "description": PSK, "text": PSK}
    responses: list[httpx.Response] = []
    called = set()
    for method, path in _operations(app):
        url = "http://test" + _path(path, ids)
        if path.endswith("/events/stream"):
            count = db.call(lambda s: len(list(s.scalars(select(Event.id)))))
            r = await client.get(url, params={"after_id": 0, "max_events": count})
        elif path == "/api/v1/secrets/{secret_id}" and method == "put":
            r = await client.put(url, json={"value": PSK2})
            assert r.status_code == 200
        elif method in ("post", "put", "patch"):
            r = await client.request(method, url, json=stuffed)
            responses.append(await client.request(method, url, content=b"{" + PSK.encode()))
        else:
            r = await client.request(method, url)
        assert r.status_code < 500, (method, path, r.text)
        # the same call with a wrong token that is a secret of another kind
        responses.append(await anon.request(method, url, headers={
            "authorization": f"Bearer {PSK}"}))
        responses.append(r)
        called.add((method, path))
    assert len(called) >= 50
    metrics = await anon.get("/metrics", headers={
        "authorization": f"Bearer {tokens[Scope.READ]}"})
    assert metrics.status_code == 200
    responses.append(metrics)
    events = db.call(lambda s: [json.dumps(
        [e.message, e.before, e.after, e.data, e.actor, e.resource_id], default=str)
        for e in s.scalars(select(Event))])
    assert any('"secret.update"' in e or "secret" in e for e in events)
    for secret in secrets:
        for r in responses:
            assert secret not in r.text, (r.request.method, r.request.url, secret)
            assert secret not in str(r.headers)
        assert secret not in caplog.text
        assert not [e for e in events if secret in e]
