"""Helpers shared by the lab modules that run daemon pairs (and strongSwan) in namespaces:
named steps with their times, routes between the pair subnets, ping, the REST daemon."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.lab.conftest import Gateway, GatewayPair
from tests.support.xfrmctl_daemon import (
    PYTHON,
    XfrmctlDaemon,
)


class Steps:
    """Seconds per step, recorded as junit properties (lab-results/junit.xml)."""

    def __init__(self, record: Callable[[str, object], None]) -> None:
        self.record = record
        self.last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.record(f"seconds_{name}", round(now - self.last, 2))
        self.last = now


def route_subnets(pair: GatewayPair) -> None:
    pair.left.run("ip", "route", "add", pair.right.subnet, "via", pair.right.outer)
    pair.right.run("ip", "route", "add", pair.left.subnet, "via", pair.left.outer)


def ping(src: Gateway, dst: Gateway, count: int = 5) -> str:
    return src.run("ping", "-c", str(count), "-i", "0.2", "-W", "5", "-I", src.inner, dst.inner,
                   check=False)


PSK = "lab-rest-test-psk-not-secret"


LEFT_ID, RIGHT_ID = "left.example.org", "right.example.org"


class DatabaseDaemon(XfrmctlDaemon):
    """`xfrmctl daemon --api` with its configuration in the database (no file)."""

    def argv(self) -> list[str]:
        return [str(PYTHON), "-m", "xfrmctl.cli", "daemon", "--listen", "192.0.2.1", "--api",
                "--log-json", "--log-level", self.log_level]


def api_env(work: Path) -> dict[str, str]:
    return {"XFRMCTL_DATABASE_URL": f"sqlite:///{work}/xfrmctl.db",
            "XFRMCTL_SECRET_KEY_FILE": str(work / "secret.key"),
            "XFRMCTL_API_SOCKET": str(work / "api.sock"),
            "XFRMCTL_CONFIG": str(work / "none.yaml")}


def wait_for_api(socket_path: Path, daemon: XfrmctlDaemon, timeout: float = 300.0) -> None:
    """Until the API accepts connections on its socket. It binds after the IKE sockets
    (importing FastAPI is slow under TCG), and the file exists a moment before uvicorn
    listens on it: a connection then is refused."""
    deadline = time.monotonic() + timeout
    while not _accepts(socket_path):
        assert daemon.running, f"daemon exited\n{daemon.tail()}"
        assert time.monotonic() < deadline, f"no API on {socket_path} after {timeout} s\n" \
            f"{daemon.tail()}"
        time.sleep(0.5)


def _accepts(socket_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(socket_path))
        except OSError:  # not there yet, or not listening yet
            return False
    return True
