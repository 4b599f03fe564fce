"""The dashboard's sign-in, session cookie, CSRF check and local API docs, over ASGI
(no browser: these run everywhere; tests/ui/test_dashboard.py drives Chromium)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.support.api_app import app, controller, db, settings, tokens
from xfrmctl.store.tokens import Scope

__all__ = ["app", "controller", "db", "settings", "tokens"]  # fixtures used here
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client without a bearer token: only what a browser would send."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        yield c


async def sign_in(c: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await c.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    return await c.post("/ui/login", data={"token": token, "nonce": nonce[1]})


async def csrf_of(c: httpx.AsyncClient) -> str:
    page = await c.get("/ui/")
    assert page.status_code == 200, page.text
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert found is not None
    return found[1]


async def test_sign_in_sets_a_strict_http_only_cookie(browser: httpx.AsyncClient,
                                                      tokens: dict[Scope, str]) -> None:
    assert (await browser.get("/ui/")).headers["location"] == "/ui/login"
    bad = await sign_in(browser, "xfc_wrong")
    assert bad.status_code == 401 and "not valid" in bad.text
    assert "xfrmctl_session" not in browser.cookies
    ok = await sign_in(browser, tokens[Scope.ADMIN])
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    page = await browser.get("/ui/")
    assert page.status_code == 200 and tokens[Scope.ADMIN] not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_sign_in_needs_the_forms_nonce(browser: httpx.AsyncClient,
                                            tokens: dict[Scope, str]) -> None:
    forged = await browser.post("/ui/login", data={"token": tokens[Scope.ADMIN], "nonce": "x"})
    assert forged.status_code == 403 and "xfrmctl_session" not in browser.cookies


async def test_sign_in_refuses_an_oversized_form(browser: httpx.AsyncClient,
                                                 tokens: dict[Scope, str]) -> None:
    form = await browser.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    big = await browser.post("/ui/login", data={"token": tokens[Scope.ADMIN],
                                                "nonce": nonce[1], "pad": "x" * 10000})
    assert big.status_code == 413 and "xfrmctl_session" not in browser.cookies


async def test_cookie_is_secure_over_tls(app: FastAPI, tokens: dict[Scope, str]) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://test") as c:
        ok = await sign_in(c, tokens[Scope.ADMIN])
    assert "secure" in ok.headers["set-cookie"].lower()


async def test_state_changes_need_the_csrf_token(browser: httpx.AsyncClient,
                                                 tokens: dict[Scope, str]) -> None:
    await sign_in(browser, tokens[Scope.ADMIN])
    assert (await browser.get("/api/v1/status")).status_code == 200  # reads need none
    body = {"name": "c1", "remote_addrs": ["192.0.2.2"]}
    missing = await browser.post("/api/v1/connections", json=body)
    assert missing.status_code == 403 and "CSRF" in missing.json()["detail"]
    wrong = await browser.post("/api/v1/connections", json=body,
                               headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    assert (await browser.get("/api/v1/connections")).json()["count"] == 0
    csrf = await csrf_of(browser)
    secret = await browser.post("/api/v1/secrets", headers={"X-CSRF-Token": csrf}, json={
        "name": "c1-psk", "kind": "psk", "value": "documentation-only-psk"})
    assert secret.status_code == 201, secret.text
    body["secret_id"] = secret.json()["id"]
    made = await browser.post("/api/v1/connections", json=body, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201, made.text
    gone = await browser.delete(f"/api/v1/connections/{made.json()['id']}")
    assert gone.status_code == 403


async def test_a_read_token_gets_no_buttons_and_is_refused(browser: httpx.AsyncClient,
                                                          tokens: dict[Scope, str]) -> None:
    await sign_in(browser, tokens[Scope.READ])
    csrf = await csrf_of(browser)
    for path in ("/ui/", "/ui/connections/1", "/ui/sas/1", "/ui/pki"):
        page = await browser.get(path)
        assert page.status_code == 200
        assert 'data-can-operate="false"' in page.text
        assert "data-act=" not in page.text and "New connection" not in page.text
    refused = await browser.post("/api/v1/connections", headers={"X-CSRF-Token": csrf},
                                 json={"name": "c1"})
    assert refused.status_code == 403 and "scope" in refused.json()["detail"]


async def test_sign_out_needs_csrf_and_ends_the_session(browser: httpx.AsyncClient,
                                                       tokens: dict[Scope, str]) -> None:
    await sign_in(browser, tokens[Scope.OPERATE])
    csrf = await csrf_of(browser)
    assert (await browser.post("/ui/logout", data={"csrf": "nope"})).status_code == 403
    out = await browser.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert "xfrmctl_session" not in browser.cookies
    assert (await browser.get("/api/v1/status")).status_code == 401


async def test_the_pages_event_stream_needs_a_session(browser: httpx.AsyncClient) -> None:
    assert (await browser.get("/ui/stream")).status_code == 401


async def test_api_docs_load_nothing_from_other_hosts(browser: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc"):
        page = await browser.get(path)
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href|url)\s*[=:]\s*["\']([^"\']+)', page.text)
        assert urls and all(u.startswith("/") for u in urls), urls
        for url in urls:
            if url.startswith("/ui/static/"):
                asset = await browser.get(url)
                assert asset.status_code == 200 and len(asset.content) > 100, url


@pytest.mark.slow
def test_the_wheel_ships_templates_and_vendored_assets(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, timeout=300,
                   capture_output=True)
    wheel = next(tmp_path.glob("xfrmctl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "api" / "ui").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped - names == set()
    assert "api/ui/static/vendor/swagger-ui-dist-5.36.0/LICENSE" in names
