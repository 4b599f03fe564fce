"""The CLI against a real daemon process started with a configuration file, `--api` and
`--kernel memory` (no root, no ESP; IKE on loopback): the issue's session, replayed.

Before, `conn add test1` said "added" while the daemon refused it (file mode),
`status` listed no connections, test1 showed another connection's state (ids collided),
`conn down test1` tore that other connection down, and `conn down NAME` did not know the
file's connections."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PSK = "memory-daemon test-only psk 1a2b"


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    config: Path

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xfrmctl.cli", *args], env=self.env,
                              input=stdin, capture_output=True, text=True, timeout=60,
                              check=False)

    def json(self, *args: str) -> Any:
        result = self.cli("--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def status(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.json("status")["connections"]}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    ike, nat = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_DGRAM)
    config = tmp_path / "gw.yaml"
    lan = ("    children:\n      lan:\n        local_ts: [198.51.100.0/24]\n"
           "        remote_ts: [203.0.113.0/24]\n")
    config.write_text(
        f"listen: [127.0.0.1]\nike_port: {ike}\nnat_port: {nat}\nconnections:\n"
        f"  site-b:\n    remote_addrs: [192.0.2.2]\n    psk: {PSK}\n"
        f"    start_action: start\n{lan}"
        f"  site-c:\n    remote_addrs: [192.0.2.3]\n    psk: {PSK}\n{lan}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]),
           "XFRMCTL_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
           "XFRMCTL_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
           "XFRMCTL_CONFIG": str(tmp_path / "none.yaml"),
           "XFRMCTL_API_SOCKET": str(tmp_path / "api.sock"),
           "XFRMCTL_API_PORT": str(_free_port()),
           "XFRMCTL_URL": f"unix://{tmp_path}/api.sock"}
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xfrmctl.cli", "daemon", "-c",
                                 str(config), "--api", "--kernel", "memory"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    gw = Gateway(proc, env, log, config)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "api.sock").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        token = gw.json("token", "create", "admin", "--scope", "admin", "--local")["token"]
        gw.env["XFRMCTL_TOKEN"] = token
        yield gw
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_issue_session_with_a_file_configured_daemon(gateway: Gateway) -> None:
    gw = gateway
    assert "KERNEL IN MEMORY" in gw.log.read_text()
    before = gw.status()
    assert sorted(before) == ["site-b", "site-c"]  # file connections are listed
    assert before["site-b"]["state"] == "connecting"

    added = gw.cli("conn", "add", "test1", "--remote-addr", "192.0.2.9", "--psk-stdin",
                   "--child", "net", "--local-ts", "198.51.100.0/24", "--remote-ts",
                   "192.0.2.9/32", stdin=PSK + "\n")
    assert added.returncode == 0, added.stderr
    assert "ActionRejected" not in gw.log.read_text()
    status = gw.status()
    assert sorted(status) == ["site-b", "site-c", "test1"]
    assert len({c["id"] for c in status.values()}) == 3
    assert status["test1"]["state"] == "down" and status["test1"]["ike_sa_ids"] == []
    assert gw.json("status")["kernel"] == "memory"
    text = gw.cli("status")
    assert "IN MEMORY" in text.stdout

    assert gw.cli("conn", "down", "test1").returncode == 0
    assert gw.status()["site-b"]["ike_sa_ids"] == before["site-b"]["ike_sa_ids"]

    down = gw.cli("conn", "down", "site-b")  # a file connection, by name
    assert down.returncode == 0, down.stderr

    edit = gw.cli("conn", "edit", "site-c", "--dpd-delay", "10")
    assert edit.returncode != 0 and "edit the file" in edit.stderr
    assert str(gw.config) in edit.stderr and "Traceback" not in edit.stderr
    assert gw.cli("conn", "takeover", "site-c").returncode == 0
    assert gw.cli("conn", "edit", "site-c", "--dpd-delay", "10").returncode == 0
    listed = {c["name"]: c for c in gw.json("conn", "list")}
    assert listed["site-c"]["managed_by"] is None
    assert listed["site-b"]["managed_by"] == f"file:{gw.config.resolve()}"
    assert PSK not in gw.log.read_text()
