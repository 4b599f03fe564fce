"""Two xfrmctl gateways configured by one playbook run, as the README shows it: the
pieces shared by the host test (daemons on the in-memory kernel, tests/ansible) and the
lab test (real ESP and a ping, tests/lab/test_ansible_tunnel.py).

The gateways are the inventory hosts gw1 and gw2, both `ansible_connection: local`
(their APIs are unix sockets on this machine), each with its host vars: api_url,
api_token, transit (its IKE address), lan (its protected subnet), peer (the other
host). One `ansible-playbook` run configures both (in parallel forks); what changed is
read from the PLAY RECAP, so the playbook needs no task to write results (under TCG
every module run costs a Python start and a compile of Ansible's module_utils).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.xfrmctl_daemon import PYTHON, XfrmctlDaemon
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.tokens import Scope

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "deploy" / "ansible"
TUNNEL_PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "tunnel.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
_RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)


class ApiDaemon(XfrmctlDaemon):
    """`xfrmctl daemon --api` in database mode (no configuration file), IKE on the
    gateway's transit address; `kernel="memory"` for a host without ESP."""

    def __init__(self, netns: str, workdir: Path, *, listen: str,
                 kernel: str | None = None) -> None:
        super().__init__(netns, workdir, {}, env=api_env(workdir))
        self.listen = listen
        self.kernel = kernel

    def argv(self) -> list[str]:
        argv = [str(PYTHON), "-m", "xfrmctl.cli", "daemon", "--listen", self.listen, "--api",
                "--log-json", "--log-level", self.log_level]
        return [*argv, "--kernel", self.kernel] if self.kernel else argv

    @property
    def socket(self) -> Path:
        return self.workdir / "api.sock"


def api_env(work: Path) -> dict[str, str]:
    return {"XFRMCTL_DATABASE_URL": f"sqlite:///{work}/xfrmctl.db",
            "XFRMCTL_SECRET_KEY_FILE": str(work / "secret.key"),
            "XFRMCTL_API_SOCKET": str(work / "api.sock"),
            "XFRMCTL_CONFIG": str(work / "none.yaml")}


def prepare_database(work: Path) -> str:
    """The schema and an admin token, in this process (a Python start costs a minute
    under TCG); returns the token."""
    work.mkdir(parents=True, exist_ok=True)
    url = api_env(work)["XFRMCTL_DATABASE_URL"]
    upgrade(url)
    db = Database(url)
    try:
        _, token = db.call(repo.create_token, name="ansible", scopes=[Scope.ADMIN],
                           actor="test")
    finally:
        db.dispose()
    return token


@dataclass(frozen=True)
class Gateway:
    """What the playbook knows of one gateway (its inventory host vars)."""

    host: str  # gw1 or gw2
    daemon: ApiDaemon
    token: str
    transit: str
    lan: str

    def host_vars(self, peer: str) -> dict[str, Any]:
        return {"api_url": f"unix://{self.daemon.socket}", "api_token": self.token,
                "transit": self.transit, "lan": self.lan, "peer": peer,
                "api_timeout": 300,  # one API call under TCG while Ansible's forks start
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable}


def write_inventory(path: Path, gw1: Gateway, gw2: Gateway) -> Path:
    """A YAML inventory (JSON is YAML) with the group `gateways`."""
    hosts = {gw1.host: gw1.host_vars(gw2.host), gw2.host: gw2.host_vars(gw1.host)}
    path.write_text(json.dumps({"all": {"children": {"gateways": {"hosts": hosts}}}}))
    return path


@dataclass
class Played:
    proc: subprocess.CompletedProcess[str]

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP per host: {"gw1": {"ok": 4, "changed": 3, "failed": 0, ...}}."""
        text = self.proc.stdout.rpartition("PLAY RECAP")[2]
        return {host: {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
                for host, counts in _RECAP.findall(text)}


def play(playbook: Path, inventory: Path, work: Path, extra: dict[str, Any],
         timeout: float = 900) -> Played:
    """One ansible-playbook run, set up to be cheap: pipelining (no temporary files per
    task), no fact gathering, no interpreter discovery, the YAML inventory plugin only,
    no collections searched beyond this checkout's."""
    variables = work / f"{playbook.stem}.vars.json"
    variables.write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="0", ANSIBLE_PIPELINING="1",
               ANSIBLE_GATHERING="explicit", ANSIBLE_INVENTORY_ENABLED="yaml",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"),
               ANSIBLE_REMOTE_TEMP=str(work / "ansible-remote"))
    for name in ("XFRMCTL_URL", "XFRMCTL_TOKEN", "ANSIBLE_CONFIG"):
        env.pop(name, None)
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inventory), "--diff",
                           "-e", f"@{variables}", str(playbook)], env=env, cwd=work,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return Played(proc)
