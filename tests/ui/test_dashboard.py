"""The dashboard in a real browser (headless Chromium) against two gateways.

Gateway A serves the API and the dashboard; gateway B answers A's IKE. Both run on the
in-memory kernel: IKE is negotiated for real over the veth between the namespaces, but
no ESP packet flows, so byte counters stay 0 here; the test asserts that the table shows
exactly the counters the API reports (tests/lab/test_dashboard_lab.py watches them rise
on a real kernel)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import ARTIFACTS, PSK, Lab, never_other_hosts

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]
WAIT = 90_000  # ms: a loaded CI machine


def _expected_refusal(text: str) -> bool:
    """Chromium logs every 4xx answer as a console error: the refusals this test asks for
    (bad token 401, CSRF or scope 403, the field error 422) are not page errors."""
    return re.match(r"Failed to load resource: the server responded with a status of "
                    r"(401|403|422)\b", text) is not None


def _watch(page: Any) -> list[str]:
    """Console errors, uncaught exceptions and requests to any other host."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not _expected_refusal(m.text) else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if never_other_hosts(r.url)
            else problems.append(f"request to another host: {r.url}"))
    return problems


def _shot(page: Any, name: str, full_page: bool = True) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def _sign_in(page: Any, lab: Lab, token: str) -> None:
    page.goto(f"{lab.base}/ui/")
    assert page.url.endswith("/ui/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{lab.base}/ui/")


def _fetch(page: Any, method: str, path: str, csrf: bool) -> dict[str, Any]:
    """A request made by the page's own JavaScript, with or without the CSRF header."""
    result: dict[str, Any] = page.evaluate(
        """async ([method, path, csrf]) => {
             const headers = {};
             const meta = document.querySelector('meta[name=csrf-token]');
             if (csrf) headers["X-CSRF-Token"] = meta.content;
             const r = await fetch(path, {method, headers, credentials: "same-origin"});
             return {status: r.status, body: await r.text()};
           }""", [method, path, csrf])
    return result


def _until(check: Callable[[], bool], what: str, page: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        page.wait_for_timeout(500)


def test_operator_session(lab: Lab, browser: Any) -> None:
    # bypass_csp: Playwright's wait_for_function evaluates strings; the header is checked
    # on the response below (the pages' own scripts never need eval).
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page = ctx.new_page()
    problems = _watch(page)

    # Sign-in: a wrong token is refused with a sentence, the right one opens the overview.
    response = page.goto(f"{lab.base}/ui/")
    assert page.url.endswith("/ui/login")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    _shot(page, "01-login")
    page.fill("#token", "xfc_not-a-token")
    page.click("button[type=submit]")
    assert "not valid" in page.locator("#login-error").inner_text()
    page.fill("#token", lab.tokens["admin"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{lab.base}/ui/")
    session = next(c for c in ctx.cookies() if c["name"] == "xfrmctl_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert lab.tokens["admin"] not in page.content()

    # Overview: the file connection to an absent peer, down or connecting, with the
    # same reason as the API's (and so `xfrmctl status`'s).
    row = page.locator("#conns tr[data-connection=branch-c]")
    row.wait_for(timeout=WAIT)
    _, status = lab.api("GET", "/status")
    branch = next(c for c in status["connections"] if c["name"] == "branch-c")
    assert branch["state"] != "up"
    assert branch["state"] in row.inner_text()
    if branch["reason"]:
        page.wait_for_function(
            "r => document.querySelector('#conns tr[data-connection=branch-c]').innerText"
            ".includes(r)", arg=branch["reason"][:40], timeout=WAIT)
    page.wait_for_selector("#chart canvas", timeout=WAIT)
    _shot(page, "02-overview")

    # The SA table, open in a second tab before the connection exists; never reloaded.
    table = ctx.new_page()
    problems += _watch(table)
    table.goto(f"{lab.base}/ui/sas")
    table.wait_for_selector("#sa-count:has-text('CHILD_SAs')", timeout=WAIT)
    table.evaluate("window.__notReloaded = true")
    before = table.locator("#sas tbody tr").count()

    # Create a connection through the form: a field error from the API first.
    page.goto(f"{lab.base}/ui/connections/new")
    page.wait_for_selector("#child-list [data-child]")
    page.fill("#f-name", "to-b")
    page.fill("#f-local_addrs", "192.0.2.1")
    page.fill("#f-remote_addrs", "192.0.2.2/33")  # not an address, prefix or name
    page.select_option("#f-start_action", "start")
    page.click("details summary")
    page.fill("#s-name", "to-b-psk")
    page.fill("#s-value", PSK)
    page.click("#s-create")
    page.wait_for_function("document.querySelector('#f-secret_id').value !== ''")
    assert page.locator("#s-value").input_value() == ""  # write-only: not kept in the page
    page.fill("#child-0-name", "net")
    page.fill("#child-0-local_ts", "198.51.100.0/24")
    page.fill("#child-0-remote_ts", "203.0.113.0/24")
    page.select_option("#child-0-start_action", "start")
    page.click("#save")
    invalid = page.locator("#f-remote_addrs[aria-invalid=true]")
    invalid.wait_for(timeout=WAIT)
    message = page.locator(".field-error").first.inner_text()
    assert message, "the API's validation error is shown at the field"
    _shot(page, "03-form-field-error")
    code, conns = lab.api("GET", "/connections")
    assert code == 200 and "to-b" not in [c["name"] for c in conns["data"]]
    page.fill("#f-remote_addrs", "192.0.2.2")
    page.click("#save")
    page.wait_for_url(re.compile(r".*/ui/connections/\d+$"), timeout=WAIT)
    assert page.locator(".field-error").count() == 0
    conn_id = int(page.url.rsplit("/", 1)[1])

    # It comes up (the daemon applies the new connection and initiates it).
    page.wait_for_function("document.querySelector('#conn-state').textContent === 'up'",
                           timeout=WAIT)
    page.wait_for_selector("#children tbody tr:has-text('198.51.100.0/24')", timeout=WAIT)
    _shot(page, "04-connection-up")

    page.goto(f"{lab.base}/ui/")
    page.wait_for_selector("#conns tr[data-connection=to-b] .state.up", timeout=WAIT)
    page.wait_for_function("document.querySelector('#n-child').textContent === '1'",
                           timeout=WAIT)
    _shot(page, "04b-overview-up", full_page=False)  # the README's screenshot
    page.goto(f"{lab.base}/ui/connections/{conn_id}")
    page.wait_for_selector("#conn-config dd", timeout=WAIT)

    # ... and appears in the SA table without a reload.
    table.wait_for_function(f"document.querySelectorAll('#sas tbody tr').length > {before}",
                            timeout=WAIT)
    assert table.evaluate("window.__notReloaded") is True
    new_row = table.locator("#sas tbody tr", has_text="to-b / net")
    new_row.wait_for(timeout=WAIT)
    _, children = lab.api("GET", f"/child-sas?connection_id={conn_id}")
    sa = children["data"][0]
    assert sa["spi_in"] in new_row.inner_text() and "198.51.100.0/24" in new_row.inner_text()
    # Counters: the table shows what the API reports (0 on the memory kernel: no ESP).
    _until(lambda: int(new_row.locator("td[data-bytes]").get_attribute("data-bytes") or -1)
           == sum(lab.api("GET", f"/child-sas/{sa['id']}")[1]["traffic"][k]
                  for k in ("bytes_in", "bytes_out")), "the table's counters", table)
    assert new_row.locator("canvas.spark").count() == 1
    table.fill("#filter", "no-such-connection")
    assert table.locator("#sas tbody tr").count() == 0
    table.fill("#filter", sa["spi_out"])
    assert table.locator("#sas tbody tr").count() == 1
    table.fill("#filter", "")
    _shot(table, "05-sa-table")
    new_row.locator("a").click()
    table.wait_for_selector(f"#child-fields dd:has-text('{sa['spi_in']}')", timeout=WAIT)
    _shot(table, "06-sa-detail")

    # Terminate it from the connection page (with a confirmation), and see the reason.
    page.click(".actions button[data-act=terminate]")
    assert page.locator("#confirm[open]").is_visible()
    page.click("#confirm-ok")
    page.wait_for_function("document.querySelector('#conn-state').textContent !== 'up'",
                           timeout=WAIT)
    page.wait_for_function("document.querySelector('#conn-reason').textContent.length > 5",
                           timeout=WAIT)
    _, status = lab.api("GET", "/status")
    mine = next(c for c in status["connections"] if c["id"] == conn_id)
    assert mine["reason"] and mine["reason"] in page.locator("#conn-reason").inner_text()
    _shot(page, "07-connection-terminated")

    # Events: the tunnel's history, and the live tail adds the next one without reload.
    page.goto(f"{lab.base}/ui/events")
    page.wait_for_selector("#events tbody tr:has-text('ChildSaNegotiated')", timeout=WAIT)
    shown = page.locator("#events tbody tr").count()
    assert lab.api("POST", f"/connections/{conn_id}/initiate")[0] == 202
    page.wait_for_function(f"document.querySelectorAll('#events tbody tr').length > {shown}",
                           timeout=WAIT)
    _shot(page, "08-events")
    page.goto(f"{lab.base}/ui/audit")
    page.wait_for_selector("#events tbody tr:has-text('token:ui-admin')", timeout=WAIT)
    assert lab.api("POST", f"/connections/{conn_id}/rekey")[0] == 202  # audited: live tail
    page.wait_for_selector("#events tbody tr.new:has-text('rekey')", timeout=WAIT)
    _shot(page, "09-audit")
    page.goto(f"{lab.base}/ui/pki")
    page.wait_for_selector("#secrets tbody tr:has-text('to-b-psk')", timeout=WAIT)
    assert PSK not in page.content()
    _shot(page, "10-secrets-pki")

    # CSRF: the same session without the token is refused; with it, accepted.
    refused = _fetch(page, "POST", f"/api/v1/connections/{conn_id}/rekey", csrf=False)
    assert refused["status"] == 403 and "CSRF" in refused["body"]
    accepted = _fetch(page, "POST", f"/api/v1/connections/{conn_id}/terminate", csrf=True)
    assert accepted["status"] == 202, accepted

    # The API docs come from the package, not a CDN.
    page.goto(f"{lab.base}/docs")
    page.wait_for_selector(".swagger-ui .info", timeout=WAIT)
    _shot(page, "11-api-docs", full_page=False)

    # On a phone: nothing wider than the screen but the scrolling tables.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                bypass_csp=True)
    phone.add_cookies([c for c in ctx.cookies() if c["name"] == "xfrmctl_session"])
    small = phone.new_page()
    problems += _watch(small)
    small.goto(f"{lab.base}/ui/")
    small.wait_for_selector("#conns tr[data-connection=to-b]", timeout=WAIT)
    assert small.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(small, "12-overview-phone")
    small.goto(f"{lab.base}/ui/sas")
    small.wait_for_selector("#sa-count", timeout=WAIT)
    assert small.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(small, "13-sas-phone")

    # Signing out ends the session.
    page.goto(f"{lab.base}/ui/")
    page.click("form.who button")
    page.wait_for_url(f"{lab.base}/ui/login")
    assert not [c for c in ctx.cookies() if c["name"] == "xfrmctl_session"]
    page.goto(f"{lab.base}/ui/sas")
    assert page.url.endswith("/ui/login")
    assert problems == []


def test_read_only_token_cannot_act(lab: Lab, browser: Any) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page = ctx.new_page()
    problems = _watch(page)
    _sign_in(page, lab, lab.tokens["read"])
    page.locator("#conns tr[data-connection=branch-c]").wait_for(timeout=WAIT)
    assert page.locator("#conns button").count() == 0
    assert page.locator("a:has-text('New connection')").count() == 0
    _, conns = lab.api("GET", "/connections")
    cid = conns["data"][0]["id"]
    page.goto(f"{lab.base}/ui/connections/{cid}")
    page.wait_for_selector("#conn-config dd", timeout=WAIT)
    assert page.locator(".actions button").count() == 0
    assert page.locator("a:has-text('Edit')").count() == 0
    _shot(page, "20-read-only-connection")
    # The server refuses anyway, even with a valid CSRF token.
    for method, path in (("POST", f"/api/v1/connections/{cid}/initiate"),
                         ("DELETE", f"/api/v1/connections/{cid}")):
        answer = _fetch(page, method, path, csrf=True)
        assert answer["status"] == 403 and "scope" in answer["body"], answer
    assert lab.api("GET", f"/connections/{cid}")[0] == 200
    assert problems == []
