"""A running daemon with its API for the collection's playbooks, and a playbook runner.

The daemon runs in database mode in a network namespace of its own (its IKE socket on
that namespace's loopback); the playbooks reach its API over the unix socket, which
also exercises the collection's unix-socket client. Playbooks run with
`ansible-playbook` against localhost (`connection: local`) with this venv's Python.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import netns, require_root
from tests.support.process import terminate
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.models import Secret
from xfrmctl.store.secrets import SecretBox

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "deploy" / "ansible"
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
XFRMCTL = BIN / "xfrmctl"


@dataclass
class Api:
    url: str
    token: str
    workdir: Path
    env: dict[str, str]

    def xfrmctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(XFRMCTL), *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=True)

    def get(self, path: str) -> Any:
        """GET /api/v1<path> over the unix socket (the test's own view, not the module's)."""
        conn = _UnixConnection(self.url.removeprefix("unix://"))
        conn.request("GET", "/api/v1" + path, headers={"Authorization": f"Bearer {self.token}"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (path, resp.status, body)
        return json.loads(body)

    def names(self, path: str) -> list[str]:
        return sorted(item["name"] for item in self.get(path + "?limit=500")["data"])

    def secret_value(self, name: str) -> str:
        """A stored secret's plaintext, read from the database with the daemon's key
        (the API never returns it)."""
        db = Database(self.env["XFRMCTL_DATABASE_URL"])
        try:
            (secret,) = [s for s in db.call(repo.list_page, Secret, limit=1000)[0]
                         if s.name == name]
            box = SecretBox.from_file(Path(self.env["XFRMCTL_SECRET_KEY_FILE"]))
            return db.call(repo.reveal_secret, box, secret.id).decode()
        finally:
            db.dispose()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


@pytest.fixture(scope="package")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    require_root()
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[dev]')")
    work = tmp_path_factory.mktemp("ansible-api")
    env = dict(os.environ,
               PYTHONPATH=str(REPO),
               XFRMCTL_DATABASE_URL=f"sqlite:///{work}/xfrmctl.db",
               XFRMCTL_SECRET_KEY_FILE=str(work / "secret.key"),
               XFRMCTL_API_SOCKET=str(work / "api.sock"),
               XFRMCTL_CONFIG=str(work / "none.yaml"))
    subprocess.run([str(XFRMCTL), "db", "upgrade"], env=env, check=True, capture_output=True,
                   timeout=300)
    created = subprocess.run([str(XFRMCTL), "token", "create", "ansible", "--scope", "admin",
                              "--local", "--json"], env=env, check=True, capture_output=True,
                             text=True, timeout=120)
    token = json.loads(created.stdout)["token"]
    with netns("xans") as ns, (work / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, str(XFRMCTL), "daemon",
                                 "--api", "--listen", "127.0.0.1", "--log-json"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (work / "api.sock").is_socket():
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("daemon did not start: " + (work / "daemon.log").read_text())
                time.sleep(0.2)
            yield Api(f"unix://{work / 'api.sock'}", token, work, env)
        finally:
            terminate(proc, 30)


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    results: dict[str, Any]  # every registered task result, by its register name

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr


def run_playbook(api: Api, playbook: str, extra: Mapping[str, Any] | None = None,
                 *args: str) -> Run:
    """Run playbooks/<playbook>; its last task writes the registered results to `out`."""
    out = api.workdir / f"{playbook}.results.json"
    out.unlink(missing_ok=True)
    variables = {"xfrmctl_url": api.url, "xfrmctl_token": api.token, "out": str(out),
                 "ansible_python_interpreter": sys.executable, **(extra or {})}
    vars_file = api.workdir / f"{playbook}.vars.json"
    vars_file.write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_LOG_PATH=str(api.workdir / "ansible.log"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0",
               ANSIBLE_LOCAL_TEMP=str(api.workdir / "ansible-tmp"),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    env.pop("XFRMCTL_URL", None)
    env.pop("XFRMCTL_TOKEN", None)
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "--diff",
                           "-e", f"@{vars_file}", *args, str(PLAYBOOKS / playbook)],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    results = json.loads(out.read_text()) if out.exists() else {}
    return Run(proc, results)


def ruby() -> str | None:
    return shutil.which("ruby")
