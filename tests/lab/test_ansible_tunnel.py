"""The Ansible collection brings up a real tunnel: a playbook configures two xfrmctl
gateways (database-mode daemons in the lab's namespaces, each with its API), brings the
tunnel up with the sa module, waits with the info module until the CHILD_SA is up on
both sides, pings through it; the second run of the same playbook changes nothing.

    left: xfrmctl --api                         right: xfrmctl --api
    198.51.100.0/24 == ESP 192.0.2.1 <-> 192.0.2.2 == 203.0.113.0/24
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import GatewayPair
from tests.lab.pair_common import Steps, api_env, route_subnets, wait_for_api
from tests.support.xfrmctl_daemon import PYTHON, XfrmctlDaemon
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.tokens import Scope

# Not yet seen passing in the VM (ansible-playbook under TCG is slow; its one run did not
# finish in time): run it by name, `deploy/lab/run tests/lab/test_ansible_tunnel.py`.
pytestmark = [pytest.mark.lab, pytest.mark.lab_extra]

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "tests" / "ansible" / "playbooks" / "tunnel.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PSK = "lab-ansible-psk-not-secret"


class ApiDaemon(XfrmctlDaemon):
    """`xfrmctl daemon --api` in database mode, IKE on the gateway's transit address."""

    def __init__(self, *args: Any, listen: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listen = listen

    def argv(self) -> list[str]:
        return [str(PYTHON), "-m", "xfrmctl.cli", "daemon", "--listen", self.listen, "--api",
                "--log-json", "--log-level", self.log_level]


def _prepare(work: Path) -> tuple[dict[str, str], str]:
    work.mkdir()
    env = api_env(work)
    upgrade(env["XFRMCTL_DATABASE_URL"])  # in this process: Python starts are slow (TCG)
    db = Database(env["XFRMCTL_DATABASE_URL"])
    try:
        _, token = db.call(repo.create_token, name="ansible", scopes=[Scope.ADMIN],
                           actor="lab")
    finally:
        db.dispose()
    return env, token


def _play(gw: dict[str, Any], out: Path, work: Path) -> tuple[dict[str, Any], str]:
    variables = work / "vars.json"
    variables.write_text(json.dumps({"gw": gw, "psk": PSK, "out": str(out),
                                     "ansible_python_interpreter": sys.executable}))
    out.unlink(missing_ok=True)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / "deploy" / "ansible"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"),
               ANSIBLE_REMOTE_TEMP=str(work / "ansible-remote"))
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "--diff",
                           "-e", f"@{variables}", str(PLAYBOOK)], env=env,
                          capture_output=True, text=True, timeout=3600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    return json.loads(out.read_text()), output


def test_playbook_brings_up_a_tunnel_and_is_idempotent(
    gateway_pair: GatewayPair, tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[dev]')")
    pair, step = gateway_pair, Steps(record_property)
    route_subnets(pair)
    gw: dict[str, Any] = {}
    daemons = []
    for name, side in (("left", pair.left), ("right", pair.right)):
        env, token = _prepare(tmp_path / name)
        daemon = ApiDaemon(side.netns, tmp_path / name, {}, env=env, listen=side.outer)
        daemon.start(wait=False)
        daemons.append((daemon, tmp_path / name))
        gw[name] = {"url": f"unix://{tmp_path / name / 'api.sock'}", "token": token,
                    "netns": side.netns, "outer": side.outer, "inner": side.inner,
                    "subnet": side.subnet}
    try:
        for daemon, work in daemons:
            daemon.wait_ready()
            wait_for_api(work / "api.sock", daemon)
        step("started")

        first, output = _play(gw, tmp_path / "first.json", tmp_path)
        assert first["r_up"]["changed"] is True
        assert first["r_left_connection"]["changed"] and first["r_right_connection"]["changed"]
        assert "net" in first["r_up"]["child_sas"][0]["name"]
        assert " 0% packet loss" in first["r_ping"]["stdout"], first["r_ping"]["stdout"]
        step("first_run")

        second, output2 = _play(gw, tmp_path / "second.json", tmp_path)
        for key in ("r_up", "r_left_secret", "r_right_secret", "r_left_connection",
                    "r_right_connection"):
            assert second[key]["changed"] is False, (key, second[key])
        assert " 0% packet loss" in second["r_ping"]["stdout"]
        assert "changed=0" in output2, output2[-3000:]
        step("second_run")
        for text in (output, output2, *((w / "daemon.log").read_text() for _, w in daemons)):
            assert PSK not in text
    finally:
        for daemon, _ in daemons:
            daemon.stop()
