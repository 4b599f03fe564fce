"""Configuration changes through REST lose no ping against strongSwan (issue 9's lab
check): while a ping runs through the tunnel, a child is added (CREATE_CHILD_SA), the
pinged child's selectors are edited (the CHILD_SA is rekeyed with the new selectors, so
strongSwan too keeps sending on the old one until it is deleted) and the IKE proposals
are edited (the IKE_SA is rekeyed with them; the CHILD_SAs move over untouched). Zero
lost pings, and in the end each kernel holds exactly the SAs of the two children.

    left: xfrmctl daemon, database mode, --api      right: strongSwan charon (responder)
    198.51.100.0/24 == ESP 192.0.2.1 <-> 192.0.2.2 == 203.0.113.0/24
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.lab.conftest import CharonFactory, GatewayPair
from tests.lab.pair_common import DatabaseDaemon, Steps, api_env, route_subnets, wait_for_api
from tests.support.strongswan import SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    DaemonFactory,
    XfrmctlDaemon,
    wait_installed,
    xfrm_states,
    xfrmctl_daemons,
)
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.tokens import Scope

__all__ = ["xfrmctl_daemons"]

pytestmark = pytest.mark.lab

PSK = "lab-changes-test-psk-not-secret"
LEFT_ID, RIGHT_ID = "left.example.org", "right.example.org"
# a new cipher and group, the same PRF: a rekey (a new PRF reauthenticates, see
# tests/netns/test_charon_ike_rekey.py)
IKE_OLD, IKE_NEW = "aes128gcm16-prfsha256-x25519", "aes256gcm16-prfsha256-ecp384"
LINGER = 5.0  # delete_rekeyed_delay's default


class TwoChildConn(SwanConn):
    """strongSwan's side: the pinged child `net` and a UDP-only child `udp`."""

    def as_section(self) -> dict[str, Any]:
        conn = super().as_section()
        net = conn["children"][self.child]
        conn["children"]["udp"] = {
            **net, "local_ts": [f"{t}[udp]" for t in net["local_ts"]],
            "remote_ts": [f"{t}[udp]" for t in net["remote_ts"]]}
        return conn


def test_changes_through_rest_lose_no_ping(
    gateway_pair: GatewayPair, charons: CharonFactory, xfrmctl_daemons: DaemonFactory,
    tmp_path: Path, record_property: Callable[[str, object], None],
) -> None:
    pair, step = gateway_pair, Steps(record_property)
    route_subnets(pair)
    pair.left.run("ip", "link", "set", "lo", "up")
    work = tmp_path / "left"
    work.mkdir()
    env = api_env(work)
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
    charon.load([TwoChildConn(
        "gw", child_name="net", local_addrs=[pair.right.outer],
        remote_addrs=[pair.left.outer], local_id=RIGHT_ID, remote_id=LEFT_ID,
        proposals=(IKE_OLD, IKE_NEW), local_ts=[pair.right.subnet],
        remote_ts=[pair.left.subnet])], [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])
    daemon.wait_ready()
    wait_for_api(work / "api.sock", daemon)
    step("started")
    try:
        _drive(pair, daemon, env, work, step, charon)
    finally:
        daemon.stop()


def _start_ping(pair: GatewayPair) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", pair.left.netns, "ping", "-i", "0.2", "-W", "5", "-I",
         pair.left.inner, pair.right.inner],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop_ping(proc: subprocess.Popen[str]) -> tuple[int, int, str]:
    """(transmitted, received, summary) once ping has printed its statistics."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert found, out
    return int(found[1]), int(found[2]), out[-400:]


def _drive(pair: GatewayPair, daemon: XfrmctlDaemon, env: dict[str, str], work: Path,
           step: Steps, charon: Any) -> None:
    headers = {"Authorization": f"Bearer {env['XFRMCTL_TOKEN']}"}
    transport = httpx.HTTPTransport(uds=str(work / "api.sock"))
    with httpx.Client(transport=transport, base_url="http://xfrmctl/api/v1", headers=headers,
                      timeout=120) as api:
        secret = api.post("/secrets", json={"name": "right-psk", "kind": "psk", "value": PSK})
        assert secret.status_code == 201, secret.text
        conn = api.post("/connections", json={
            "name": "to-right", "local_addrs": [pair.left.outer],
            "remote_addrs": [pair.right.outer], "local_id": LEFT_ID, "remote_id": RIGHT_ID,
            "auth": "psk", "secret_id": secret.json()["id"], "ike_proposals": IKE_OLD})
        assert conn.status_code == 201, conn.text
        conn_id = conn.json()["id"]
        net = api.post(f"/connections/{conn_id}/children", json={
            "name": "net", "local_ts": [pair.left.subnet], "remote_ts": [pair.right.subnet],
            "esp_proposals": "aes128gcm16-x25519"})
        assert net.status_code == 201, net.text
        mark = daemon.mark()
        assert api.post(f"/connections/{conn_id}/initiate").status_code < 300
        first = wait_installed(daemon, mark)
        step("tunnel_up")

        ping = _start_ping(pair)
        try:
            time.sleep(3)
            # 1. a new child: CREATE_CHILD_SA on the running IKE_SA
            mark = daemon.mark()
            udp = api.post(f"/connections/{conn_id}/children", json={
                "name": "udp", "local_ts": [f"{pair.left.subnet}[udp]"],
                "remote_ts": [f"{pair.right.subnet}[udp]"], "esp_proposals": "aes128gcm16-x25519"})
            assert udp.status_code == 201, udp.text
            added = wait_installed(daemon, mark, child="udp")
            assert added["ike_sa"] == first["ike_sa"]
            step("child_added")
            time.sleep(2)
            # 2. the pinged child's selectors: replaced, new CHILD_SA first
            narrowed = pair.right.subnet.rsplit("/", 1)[0] + "/25"
            mark = daemon.mark()
            edited = api.patch(f"/children/{net.json()['id']}",
                               json={"remote_ts": [narrowed]})
            assert edited.status_code == 200, edited.text
            replaced = wait_installed(daemon, mark, child="net")
            daemon.wait_event("ChildSaDeleted", 120, mark, reason="rekeyed")
            assert replaced["ike_sa"] == first["ike_sa"]
            assert replaced["rekey_of"] == first["spi_in"]
            assert replaced["remote_ts"] == [narrowed]
            step("selectors_edited")
            time.sleep(2)
            # 3. the IKE proposals: the IKE_SA is rekeyed with them
            mark = daemon.mark()
            edited = api.patch(f"/connections/{conn_id}", json={"ike_proposals": IKE_NEW})
            assert edited.status_code == 200, edited.text
            rekeyed = daemon.wait_event("IkeSaRekeyed", 180, mark)
            assert rekeyed["ike_sa"] == first["ike_sa"]
            step("ike_rekeyed")
            time.sleep(LINGER + 3)  # the replaced inbound SAs go after delete_rekeyed_delay
        finally:
            sent, received, summary = _stop_ping(ping)
        step("ping_stopped")
        assert sent >= 20 and received == sent, summary

        # exactly the SAs of the two children, the same on both ends
        children = [c for c in api.get("/child-sas").json()["data"]]
        assert sorted(c["name"] for c in children) == ["net", "udp"]
        spis = {int(c[k], 16) for c in children for k in ("spi_in", "spi_out")}
        assert {s.spi for s in xfrm_states(pair.left.netns)} == spis
        assert {s.spi for s in xfrm_states(pair.right.netns)} == spis
        (ike,) = api.get("/ike-sas").json()["data"]
        assert ike["encryption"] == "AES_GCM_16_256", ike
        (swan,) = charon.list_sas()
        assert len(swan.children) == 2
        step("kernel_checked")
