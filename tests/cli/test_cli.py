"""`xfrmctl` end to end: a subprocess against a real uvicorn serving the API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.cli.conftest import Server
from xfrmctl.port import Target
from xfrmctl.store.migrate import current_tables
from xfrmctl.store.tokens import Scope

PSK = "Tr0ub4dor-and-3-more-words"


def test_connection_lifecycle(server: Server) -> None:
    added = server.json("conn", "add", "gw2", "--local-addr", "192.0.2.1", "--remote-addr",
                        "198.51.100.1", "--remote-id", "gw2.example", "--psk-stdin",
                        "--child", "net", "--local-ts", "192.0.2.0/24", "--remote-ts",
                        "198.51.100.0/24", "--set", "dpd_delay=30", stdin=PSK + "\n")
    assert added["name"] == "gw2" and added["dpd_delay"] == 30 and added["secret_id"]
    assert added["children"][0]["remote_ts"] == ["198.51.100.0/24"]
    listing = server.run("conn", "list")
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "ENABLED"]
    assert "gw2" in listing.stdout and "198.51.100.1" in listing.stdout
    shown = server.json("conn", "show", "gw2")
    assert shown["children"][0]["name"] == "net"
    edited = server.json("conn", "edit", "gw2", "--start-action", "trap", "--disable")
    assert (edited["start_action"], edited["enabled"]) == ("trap", False)
    assert server.run("conn", "up", "gw2", "--no-wait").returncode == 0
    assert server.controller.calls[-1] == ("initiate", (added["id"], None))
    assert server.run("conn", "down", str(added["id"])).returncode == 0
    assert server.controller.calls[-1] == ("terminate", Target("connection", str(added["id"])))
    outputs = [server.run(*args) for args in (("conn", "show", "gw2"), ("--json", "conn",
                                              "list"), ("events", "--limit", "100"),
                                              ("--json", "events"))]
    for out in outputs:
        assert PSK not in out.stdout + out.stderr
    assert server.run("conn", "delete", "gw2").returncode == 0
    gone = server.run("conn", "show", "gw2")
    assert gone.returncode == 5 and "no connection named 'gw2'" in gone.stderr


def test_sa_views(server: Server) -> None:
    table = server.run("sa", "list")
    assert table.returncode == 0, table.stderr
    for text in ("ike-1", "1122334455667788_i", "c0ffee01_i", "192.0.2.0/24 === 198.51.100.0/24",
                 "1.5KiB/10p", "2.9KiB/20p", "ESTABLISHED", "aes256gcm16-prfsha384-x25519",
                 "198.51.100.1[gw2.example] eap:carol vip:203.0.113.9"):
        assert text in table.stdout
    data = server.json("sa", "list")
    assert data["ike_sas"][0]["spi_r"] == "99aabbccddeeff00"
    assert data["child_sas"][0]["traffic"]["bytes_out"] == 3000
    shown = server.json("sa", "show", "ike-1")
    assert [c["id"] for c in shown["child_sas"]] == ["child-1"]
    assert server.json("sa", "show", "child-1")["name"] == "net"
    assert server.run("sa", "show", "nope").returncode == 5
    policies = server.json("policy", "list")
    assert {p["direction"] for p in policies} == {"in", "out", "fwd"}


def test_status_over_unix_socket(server: Server) -> None:
    server.json("conn", "add", "a", "--psk-stdin", stdin=PSK + "\n")
    result = server.run("status", url=server.socket_url)
    assert result.returncode == 0, result.stderr
    assert "not loaded: the daemon has not loaded it (yet)" in result.stdout
    assert server.json("status", url=server.socket_url)["daemon"] is True


def test_exit_codes(server: Server) -> None:
    assert server.run("conn", "list", token=None).returncode == 4
    denied = server.run("conn", "add", "x", token=Scope.READ)
    assert denied.returncode == 4 and "admin" in denied.stderr
    bad = server.run("conn", "add", "x", "--remote-addr", "not/an address")
    assert bad.returncode == 7 and "remote_addrs" in bad.stderr
    assert server.run("conn", "add", "dup", "--psk-stdin", stdin=PSK + "\n").returncode == 0
    assert server.run("conn", "add", "dup", "--psk-stdin", stdin=PSK + "\n").returncode == 6
    assert server.run("status", url="http://127.0.0.1:9").returncode == 3
    assert server.run("conn", "add").returncode == 2  # usage


def test_events_follow(server: Server) -> None:
    secret = httpx.post(f"{server.url}/api/v1/secrets", json={
        "name": "c1-psk", "kind": "psk", "value": PSK},
        headers={"authorization": f"Bearer {server.tokens[Scope.ADMIN]}"}, timeout=30)
    assert secret.status_code == 201  # a psk connection needs its secret first
    env = {**server.env, "XFRMCTL_URL": server.url, "XFRMCTL_TOKEN": server.tokens[Scope.READ]}
    follower = subprocess.Popen(
        [sys.executable, "-m", "xfrmctl.cli", "events", "--follow", "--count", "2", "--json",
         "--kind", "audit"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline = time.monotonic() + 20
        # wait until the follower is subscribed, then make changes
        while "stream" not in server.run("events").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        server.run("conn", "add", "c1", "--secret", "c1-psk")
        server.run("conn", "edit", "c1", "--dpd-delay", "10")
        out, err = follower.communicate(timeout=20)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["connections.create", "connections.update"]
    assert events[1]["after"]["dpd_delay"] == 10


def test_tokens(server: Server, tmp_path: Path) -> None:
    created = server.run("token", "create", "ci", "--scope", "operate")
    assert created.returncode == 0
    plaintext = created.stdout.strip()
    assert plaintext.startswith("xfc_") and "not shown again" in created.stderr
    listed = server.run("token", "list")
    assert "ci" in listed.stdout and plaintext not in listed.stdout
    env_token = {**server.env, "XFRMCTL_URL": server.url, "XFRMCTL_TOKEN": plaintext}
    cmd = [sys.executable, "-m", "xfrmctl.cli", "conn", "list"]
    assert subprocess.run(cmd, env=env_token, capture_output=True, check=False).returncode == 0
    assert server.run("token", "revoke", "ci").returncode == 0
    assert subprocess.run(cmd, env=env_token, capture_output=True, check=False).returncode == 4
    # bootstrap: a first admin token written straight to the database
    local = server.json("token", "create", "root", "--scope", "admin", "--local",
                        "--database-url", server.settings.database_url)
    config = tmp_path / "cli.yaml"
    config.write_text(f"url: {server.url}\ntoken: {local['token']}\n")
    env_file = {**server.env, "XFRMCTL_CONFIG": str(config)}
    result = subprocess.run([sys.executable, "-m", "xfrmctl.cli", "token", "list"],
                            env=env_file, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "root" in result.stdout


def test_db_upgrade(server: Server, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    result = server.run("db", "upgrade", "--database-url", url, token=None)
    assert result.returncode == 0, result.stderr
    assert {"connections", "children", "events", "api_tokens"} <= current_tables(url)


def test_a_refused_conn_add_leaves_nothing_behind(server: Server) -> None:
    """Issue 9: a multi-object command is all or nothing. The PSK secret and the
    connection made before the child is refused are deleted again."""
    refused = server.run("conn", "add", "half", "--psk-stdin", "--child", "net",
                         "--local-ts", "not-a-selector", stdin=PSK + "\n")
    assert refused.returncode == 7 and "local_ts" in refused.stderr
    assert server.json("conn", "list") == []
    assert [s for s in server.json("secret", "list") if s["name"] == "half-psk"] == []
    # the same command with a good selector then goes through, secret name free again
    assert server.run("conn", "add", "half", "--psk-stdin", "--child", "net",
                      "--local-ts", "192.0.2.0/24", stdin=PSK + "\n").returncode == 0
