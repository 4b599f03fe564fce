"""A real uvicorn serving the API (fake controller, SQLite) on 127.0.0.1:<free port> and on
a unix socket, in a background thread; the CLI runs as a subprocess against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.main import create_app
from tests.support.api_app import make_token
from tests.support.fake_controller import FakeController, child_sa, ike_sa
from xfrmctl.config import Settings
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.tokens import Scope


@dataclass
class Server:
    url: str
    socket_url: str
    tokens: dict[Scope, str]
    controller: FakeController
    settings: Settings
    env: dict[str, str]

    def run(self, *args: str, token: Scope | None = Scope.ADMIN, stdin: str | None = None,
            url: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "XFRMCTL_URL": url or self.url}
        if token is not None:
            env["XFRMCTL_TOKEN"] = self.tokens[token]
        return subprocess.run([sys.executable, "-m", "xfrmctl.cli", *args], env=env,
                              input=stdin, check=False, capture_output=True, text=True,
                              timeout=timeout)

    def json(self, *args: str, **kwargs: Any) -> Any:
        result = self.run("--json", *args, **kwargs)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(config: uvicorn.Config) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/x.db",
                        secret_key_file=tmp_path / "secret.key",
                        api_socket=tmp_path / "api.sock")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    tokens = {scope: make_token(db, f"t-{scope}", scope) for scope in Scope}
    controller = FakeController()
    controller.ike.append(ike_sa(1, "ike-1"))
    controller.children.append(child_sa(1, "child-1", "ike-1"))
    app = create_app(settings, controller, db=db)
    port = _free_port()
    running = [_start(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")),
               _start(uvicorn.Config(app, uds=str(settings.api_socket), log_level="warning"))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XFRMCTL_")}
    env["XFRMCTL_CONFIG"] = str(tmp_path / "absent.yaml")
    yield Server(f"http://127.0.0.1:{port}", f"unix://{settings.api_socket}", tokens,
                 controller, settings, env)
    for srv, _ in running:
        srv.should_exit = True
    for _, thread in running:
        thread.join(10)
    db.dispose()
