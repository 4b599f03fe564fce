"""The REST API drives a real tunnel: a connection created through the API comes up against
strongSwan, shows in `xfrmctl sa list --json` with moving counters, and is torn down by
DELETE (issue 5's lab check).

    left: xfrmctl daemon, database mode, --api      right: strongSwan charon (responder)
    198.51.100.0/24 == ESP 192.0.2.1 <-> 192.0.2.2 == 203.0.113.0/24
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.lab.conftest import CharonFactory, GatewayPair
from tests.lab.pair_common import (
    LEFT_ID,
    PSK,
    RIGHT_ID,
    DatabaseDaemon,
    Steps,
    api_env,
    ping,
    route_subnets,
    wait_for_api,
)
from tests.support.strongswan import SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    PYTHON,
    DaemonFactory,
    XfrmctlDaemon,
    code_root,
    wait_installed,
    xfrm_states,
    xfrmctl_daemons,
)
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.tokens import Scope

__all__ = ["xfrmctl_daemons"]


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([str(PYTHON), "-m", "xfrmctl.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(code_root()), **env})
    assert proc.returncode == 0, f"xfrmctl {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _child_traffic(env: dict[str, str]) -> dict[str, Any]:
    listing = json.loads(_cli(env, "sa", "list", "--json"))
    (child,) = listing["child_sas"]
    return dict(child)


def test_rest_connection_against_strongswan(
    gateway_pair: GatewayPair, charons: CharonFactory, xfrmctl_daemons: DaemonFactory,
    tmp_path: Path, record_property: Callable[[str, object], None],
) -> None:
    pair, step = gateway_pair, Steps(record_property)
    route_subnets(pair)
    pair.left.run("ip", "link", "set", "lo", "up")
    work = tmp_path / "left"
    work.mkdir()
    env = api_env(work)
    # In this process, not through the CLI: each Python start costs a minute under TCG.
    upgrade(env["XFRMCTL_DATABASE_URL"])
    db = Database(env["XFRMCTL_DATABASE_URL"])
    try:
        _, token = db.call(repo.create_token, name="lab", scopes=[Scope.ADMIN], actor="lab")
    finally:
        db.dispose()
    env["XFRMCTL_TOKEN"], env["XFRMCTL_URL"] = token, f"unix://{work / 'api.sock'}"
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
    step("started")
    try:
        _drive(pair, daemon, env, work, step)
    finally:
        daemon.stop()


def _drive(pair: GatewayPair, daemon: XfrmctlDaemon, env: dict[str, str], work: Path,
           step: Steps) -> None:
    headers = {"Authorization": f"Bearer {env['XFRMCTL_TOKEN']}"}
    transport = httpx.HTTPTransport(uds=str(work / "api.sock"))
    with httpx.Client(transport=transport, base_url="http://xfrmctl/api/v1", headers=headers,
                      timeout=60) as api:
        secret = api.post("/secrets", json={"name": "right-psk", "kind": "psk", "value": PSK})
        assert secret.status_code == 201, secret.text
        assert PSK not in secret.text
        conn = api.post("/connections", json={
            "name": "to-right", "local_addrs": [pair.left.outer],
            "remote_addrs": [pair.right.outer], "local_id": LEFT_ID, "remote_id": RIGHT_ID,
            "auth": "psk", "secret_id": secret.json()["id"],
            "ike_proposals": "aes128gcm16-prfsha256-x25519"})
        assert conn.status_code == 201, conn.text
        conn_id = conn.json()["id"]
        child = api.post(f"/connections/{conn_id}/children", json={
            "name": "net", "local_ts": [pair.left.subnet], "remote_ts": [pair.right.subnet],
            "esp_proposals": "aes128gcm16-x25519"})
        assert child.status_code == 201, child.text
        mark = daemon.mark()
        initiated = api.post(f"/connections/{conn_id}/initiate")
        assert initiated.status_code < 300, initiated.text
        event = wait_installed(daemon, mark)
        step("tunnel_up")

        before = _child_traffic(env)
        # The CLI and API show SPIs in hex, as `ip xfrm` does.
        assert (int(before["spi_in"], 16), int(before["spi_out"], 16)) == (
            int(event["spi_in"]), int(event["spi_out"]))
        out = ping(pair.left, pair.right)
        assert " 0% packet loss" in out, out
        after = _child_traffic(env)
        assert after["traffic"]["packets_out"] - before["traffic"]["packets_out"] == 5
        assert after["traffic"]["packets_in"] - before["traffic"]["packets_in"] == 5
        step("counters")

        mark = daemon.mark()
        deleted = api.delete(f"/connections/{conn_id}")
        assert deleted.status_code == 204, deleted.text
        daemon.wait_event("IkeSaDown", 120, mark)
        deadline = time.monotonic() + 60
        while xfrm_states(pair.left.netns) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert xfrm_states(pair.left.netns) == []
        assert xfrm_states(pair.right.netns) == []  # charon was told
        listed = api.get("/child-sas")
        assert listed.status_code == 200 and listed.json()["count"] == 0, listed.text
        step("deleted")
    assert PSK.encode() not in (work / "daemon.log").read_bytes()
