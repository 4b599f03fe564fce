"""The dashboard shows a real tunnel: xfrmctl (left, database mode, API on 127.0.0.1 in
its namespace) against strongSwan (right). Headless Chromium, inside left's namespace,
opens the SA table; the CHILD_SA appears with its SPIs, and its byte counters rise in the
page, without a reload, while a ping runs through the tunnel (issue 10's lab check).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.lab.conftest import CharonFactory, GatewayPair
from tests.lab.pair_common import (
    LEFT_ID,
    PSK,
    RIGHT_ID,
    DatabaseDaemon,
    Steps,
    api_env,
    route_subnets,
    wait_for_api,
)
from tests.support.strongswan import SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import DaemonFactory, wait_installed, xfrmctl_daemons
from tests.ui.conftest import CHROMIUM
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.tokens import Scope

__all__ = ["xfrmctl_daemons"]
PORT = 8463
SLOW = 600_000  # ms: Chromium and the daemon under TCG


def test_sa_table_counters_rise_with_traffic(
    gateway_pair: GatewayPair, charons: CharonFactory, xfrmctl_daemons: DaemonFactory,
    tmp_path: Path, record_property: Callable[[str, object], None],
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium")
    pair, step = gateway_pair, Steps(record_property)
    route_subnets(pair)
    pair.left.run("ip", "link", "set", "lo", "up")
    work = tmp_path / "left"
    work.mkdir()
    env = {**api_env(work), "XFRMCTL_API_PORT": str(PORT)}
    upgrade(env["XFRMCTL_DATABASE_URL"])
    db = Database(env["XFRMCTL_DATABASE_URL"])
    try:
        _, token = db.call(repo.create_token, name="lab", scopes=[Scope.ADMIN], actor="lab")
    finally:
        db.dispose()
    daemon = DatabaseDaemon(pair.left.netns, work, {}, env=env)
    daemon.start(wait=False)
    charon = charons(pair.right.netns, "right", wait=False)
    charon.wait_ready()
    charon.load([SwanConn("gw", child_name="net", local_addrs=[pair.right.outer],
                          remote_addrs=[pair.left.outer], local_id=RIGHT_ID,
                          remote_id=LEFT_ID, local_ts=[pair.right.subnet],
                          remote_ts=[pair.left.subnet])],
                [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])
    daemon.wait_ready()
    wait_for_api(work / "api.sock", daemon)
    try:
        spi_in = _bring_up(pair, daemon, token, work)
        step("tunnel_up")
        wrapper = tmp_path / "chromium-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {pair.left.netns} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(wrapper), args=["--no-sandbox"],
                                        timeout=SLOW)
            try:
                _watch_counters(browser, pair, token, spi_in, tmp_path)
            finally:
                browser.close()
        step("counters_rose_in_page")
    finally:
        daemon.stop()


def _bring_up(pair: GatewayPair, daemon: Any, token: str, work: Path) -> str:
    transport = httpx.HTTPTransport(uds=str(work / "api.sock"))
    with httpx.Client(transport=transport, base_url="http://xfrmctl/api/v1", timeout=300,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        secret = api.post("/secrets", json={"name": "right-psk", "kind": "psk", "value": PSK})
        conn = api.post("/connections", json={
            "name": "to-right", "local_addrs": [pair.left.outer],
            "remote_addrs": [pair.right.outer], "local_id": LEFT_ID, "remote_id": RIGHT_ID,
            "secret_id": secret.json()["id"], "ike_proposals": "aes128gcm16-prfsha256-x25519"})
        assert conn.status_code == 201, conn.text
        child = api.post(f"/connections/{conn.json()['id']}/children", json={
            "name": "net", "local_ts": [pair.left.subnet], "remote_ts": [pair.right.subnet],
            "esp_proposals": "aes128gcm16-x25519"})
        assert child.status_code == 201, child.text
        mark = daemon.mark()
        assert api.post(f"/connections/{conn.json()['id']}/initiate").status_code < 300
        wait_installed(daemon, mark)
        (sa,) = api.get("/child-sas").json()["data"]
        return str(sa["spi_in"])


def _watch_counters(browser: Any, pair: GatewayPair, token: str, spi_in: str,
                    tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page.set_default_timeout(SLOW)
    base = f"http://127.0.0.1:{PORT}"
    page.goto(f"{base}/ui/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ui/")
    page.goto(f"{base}/ui/sas")
    row = page.locator("#sas tbody tr", has_text=spi_in)
    row.wait_for()
    page.evaluate("window.__notReloaded = true")
    before = int(row.locator("td[data-bytes]").get_attribute("data-bytes") or 0)
    ping = subprocess.Popen(["ip", "netns", "exec", pair.left.netns, "ping", "-c", "40", "-i",
                             "0.5", "-s", "1000", "-I", pair.left.inner, pair.right.inner],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page.wait_for_function(
            "([spi, before]) => [...document.querySelectorAll('#sas tbody tr')]"
            ".some(r => r.innerText.includes(spi) && "
            "Number(r.querySelector('td[data-bytes]').dataset.bytes) > before + 10000)",
            arg=[spi_in, before])
        page.screenshot(path=str(tmp_path / "lab-sa-table.png"), full_page=True)
    finally:
        out, _ = ping.communicate(timeout=300)
    assert page.evaluate("window.__notReloaded") is True
    assert " 0% packet loss" in out, out
