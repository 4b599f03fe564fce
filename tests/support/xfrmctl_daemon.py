"""Our own daemon (`xfrmctl daemon`) as a subprocess inside a network namespace.

    conf = daemon_conf(listen=["192.0.2.1"], connections={"gw": connection(...)})
    with XfrmctlDaemon("ns-left", tmp_path / "left", conf) as left:
        left.wait_event("ChildSaNegotiated", connection="gw")
        states = xfrm_states("ns-left")

The daemon runs with ``--log-json``: every line on stderr is a JSON object, and IKE
events carry ``"event": "IkeSaUp" | "ChildSaNegotiated" | ...`` with their fields. The
log goes to ``<workdir>/daemon.log``; :meth:`XfrmctlDaemon.events` parses it.
The repository is found from this file's location (CI clones it anywhere).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.process import terminate

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
START_TIMEOUT = 600.0  # seconds: under TCG a cold Python start with our imports is slow
# (SQLAlchemy too since the database is always the configuration)
CODE_CACHE = Path("/tmp/xfrmctl-lab-code")

_code_root: Path | None = None


def code_root() -> Path:
    """Where the daemon imports xfrmctl and api from.

    In the lab VM the repository is read-only and holds no bytecode: every daemon start
    would compile all of xfrmctl again, minutes under TCG. So there the packages are
    copied once per test session into a writable directory (the VM's /tmp), where the
    first daemon's bytecode serves every later start. Elsewhere: the repository.
    """
    global _code_root  # noqa: PLW0603 - one copy per process
    if _code_root is None:
        if os.environ.get("XFRMCTL_LAB") != "1":
            _code_root = REPO
        else:
            dest = CODE_CACHE / str(os.getpid())
            shutil.rmtree(dest, ignore_errors=True)
            for package in ("xfrmctl", "api"):
                shutil.copytree(REPO / package, dest / package,
                                ignore=shutil.ignore_patterns("__pycache__"))
            for other in ("migrations", "alembic.ini"):  # found relative to xfrmctl/store
                (dest / other).symlink_to(REPO / other)
            _code_root = dest
    return _code_root

Event = dict[str, Any]


class DaemonError(RuntimeError):
    """The daemon died, or an awaited event did not come in time (the log tail says why)."""


# --------------------------------------------------------------------------- configuration


def child(
    local_ts: Sequence[str] = (),
    remote_ts: Sequence[str] = (),
    *,
    esp_proposals: str | None = None,
    mode: str = "tunnel",
    rekey_time: int | None = None,
    life_time: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``children.<name>`` entry of the daemon's YAML (xfrmctl/daemon/conf.py)."""
    body: dict[str, Any] = {"local_ts": list(local_ts), "remote_ts": list(remote_ts),
                            "mode": mode, **extra}
    for key, value in (("esp_proposals", esp_proposals), ("rekey_time", rekey_time),
                       ("life_time", life_time)):
        if value is not None:
            body[key] = value
    return body


def connection(
    local_addr: str,
    remote_addr: str | None,
    children: Mapping[str, Mapping[str, Any]],
    *,
    psk: str | None = None,
    local_id: str | None = None,
    remote_id: str | None = None,
    ike_proposals: str | None = None,
    start_action: str = "none",
    **extra: Any,
) -> dict[str, Any]:
    """One ``connections.<name>`` entry: PSK unless ``auth``/``certificate``... in extra."""
    body: dict[str, Any] = {
        "local_addrs": [local_addr],
        "remote_addrs": [remote_addr] if remote_addr else [],
        "start_action": start_action,
        "children": {name: dict(c) for name, c in children.items()},
        **extra,
    }
    for key, value in (("psk", psk), ("local_id", local_id), ("remote_id", remote_id),
                       ("ike_proposals", ike_proposals)):
        if value is not None:
            body[key] = value
    return body


def daemon_conf(listen: Sequence[str], connections: Mapping[str, Mapping[str, Any]],
                **extra: Any) -> dict[str, Any]:
    return {"listen": list(listen), "connections": {n: dict(c) for n, c in connections.items()},
            **extra}


def render(conf: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(conf), sort_keys=False)


# --------------------------------------------------------------------------- the process


class XfrmctlDaemon:
    """``xfrmctl daemon -c <workdir>/xfrmctl.yaml --log-json`` in ``netns``."""

    def __init__(self, netns: str, workdir: Path | str, conf: Mapping[str, Any], *,
                 api: bool = False, env: Mapping[str, str] | None = None,
                 log_level: str = "info", kernel: str = "netlink") -> None:
        """``kernel="memory"``: the in-memory kernel (IKE against a real peer where the
        running kernel has no ESP)."""
        self.netns = netns
        self.workdir = Path(workdir).resolve()
        self.conf = dict(conf)
        self.api = api
        self.extra_env = dict(env or {})
        self.log_level = log_level
        self.kernel = kernel
        self.config_path = self.workdir / "xfrmctl.yaml"
        self.log_path = self.workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._events: list[Event] = []
        self._partial = b""

    def __enter__(self) -> XfrmctlDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, wait: bool = True) -> None:
        """Start the daemon; with ``wait``, return once its sockets are bound."""
        if self.proc is not None:
            raise DaemonError("daemon already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render(self.conf))
        self.config_path.chmod(0o600)
        argv = self.argv()
        # The daemon's database (the file is applied into it): one per daemon.
        env = {**os.environ, "PYTHONPATH": str(code_root()), "PYTHONUNBUFFERED": "1",
               "XFRMCTL_DATABASE_URL": f"sqlite:///{self.workdir}/xfrmctl.db",
               "XFRMCTL_SECRET_KEY_FILE": str(self.workdir / "secret.key"),
               **self.extra_env}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        self._offset, self._events, self._partial = 0, [], b""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv], cwd=self.workdir, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        if wait:
            self.wait_ready()

    def argv(self) -> list[str]:
        """The command line (database-mode tests override it)."""
        argv = [str(PYTHON), "-m", "xfrmctl.cli", "daemon", "-c", str(self.config_path),
                "--log-json", "--log-level", self.log_level]
        if self.kernel != "netlink":
            argv += ["--kernel", self.kernel]
        return [*argv, "--api"] if self.api else argv

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for "listening on" (Python under TCG takes a while to import)."""
        self.wait_line(lambda e: str(e.get("message", "")).startswith("listening on"),
                       timeout, "listening on")

    def reload(self, conf: Mapping[str, Any]) -> None:
        """Write a new configuration and SIGHUP the daemon (it logs "reloaded ...")."""
        mark = len(self.lines())
        self.conf = dict(conf)
        self.config_path.write_text(render(self.conf))
        self.signal(signal.SIGHUP)
        self.wait_line(lambda e: str(e.get("message", "")).startswith("reloaded"), 60,
                       "reloaded", after=mark)

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise DaemonError(f"daemon in {self.netns} not running\n{self.tail()}")
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the daemon deletes its SAs, telling the peer) and wait; SIGKILL if stuck."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        code = terminate(proc, timeout)
        self.lines()
        return code

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------- the log

    def lines(self) -> list[Event]:
        """Every JSON line logged so far (non-JSON lines become ``{"message": text}``)."""
        if self.log_path.exists():
            with open(self.log_path, "rb") as log:
                log.seek(self._offset)
                data = self._partial + log.read()
                self._offset = log.tell()
            *complete, self._partial = data.split(b"\n")
            for raw in complete:
                text = raw.decode(errors="replace").strip()
                if not text:
                    continue
                try:
                    entry = json.loads(text)
                except ValueError:
                    entry = {"message": text}
                self._events.append(entry if isinstance(entry, dict) else {"message": text})
        return self._events

    def events(self, kind: str | None = None, **fields: Any) -> list[Event]:
        """IKE events (lines with an ``event``), optionally of one kind and field values."""
        return [e for e in self.lines() if "event" in e and (kind is None or e["event"] == kind)
                and all(e.get(k) == v for k, v in fields.items())]

    def tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def errors(self, after: int = 0) -> list[Event]:
        """Lines at level error (or with an exception): a healthy run has none."""
        return [e for e in self.lines()[after:]
                if e.get("level") == "error" or "exception" in e]

    def wait_line(self, predicate: Callable[[Event], bool], timeout: float = 60.0,
                  what: str = "log line", after: int = 0) -> Event:
        """The first line (index >= ``after``) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            for entry in lines[after:]:
                if predicate(entry):
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise DaemonError(f"daemon in {self.netns} exited with {self.proc.returncode} "
                                  f"before {what}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise DaemonError(f"{self.netns}: no {what} in {timeout}s\n{self.tail()}")
            time.sleep(0.2)

    def mark(self) -> int:
        """Index of the next log line: pass as ``after`` to wait only for newer events."""
        return len(self.lines())

    def wait_event(self, kind: str, timeout: float = 60.0, after: int = 0,
                   **fields: Any) -> Event:
        """Wait for event ``kind`` with the given field values; fail fast on a
        NegotiationFailed (its message says why)."""
        def match(e: Event) -> bool:
            if e.get("event") == "NegotiationFailed" and kind != "NegotiationFailed":
                raise DaemonError(f"{self.netns}: negotiation failed while waiting for "
                                  f"{kind}: {e}\n{self.tail()}")
            return e.get("event") == kind and all(e.get(k) == v for k, v in fields.items())
        return self.wait_line(match, timeout, f"{kind} {fields or ''}", after)


# --------------------------------------------------------------------------- the kernel


@dataclass(frozen=True)
class XfrmState:
    """One SA of ``ip -s xfrm state``: its identity and its current counters."""

    src: str
    dst: str
    proto: str
    spi: int
    mode: str
    reqid: int
    bytes: int
    packets: int
    algorithms: tuple[str, ...]
    encap: str | None  # e.g. "espinudp sport 4500 dport 4500"

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.src, self.dst, self.spi)


def parse_xfrm_states(text: str) -> list[XfrmState]:
    """Parse ``ip -s xfrm state`` output (iproute2 6.1)."""
    out: list[XfrmState] = []
    for block in re.split(r"\n(?=src )", text.strip()):
        if not block.strip():
            continue
        # with -s: "spi 0x0000abcd(43981) reqid 1(0x00000001)"
        head = re.match(r"src (\S+) dst (\S+)\s+proto (\S+) spi (0x[0-9a-f]+)(?:\(\d+\))? "
                        r"reqid (\d+)(?:\(0x[0-9a-f]+\))? mode (\S+)", block)
        if head is None:
            raise ValueError(f"unexpected ip xfrm state output:\n{block}")
        current = re.search(r"lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)", block)
        algs = tuple(re.findall(r"^\s*(?:aead|enc|auth-trunc|auth|comp) (\S+)", block, re.M))
        encap = re.search(r"encap type (\S+) sport (\d+) dport (\d+)", block)
        out.append(XfrmState(
            head[1], head[2], head[3], int(head[4], 16), head[6], int(head[5]),
            int(current[1]) if current else 0, int(current[2]) if current else 0, algs,
            f"{encap[1]} sport {encap[2]} dport {encap[3]}" if encap else None))
    return out


def xfrm_states(netns: str) -> list[XfrmState]:
    """The ESP/AH SAs of a namespace with their counters."""
    proc = subprocess.run(["ip", "-n", netns, "-s", "xfrm", "state"], capture_output=True,
                          text=True, timeout=60, check=True)
    return parse_xfrm_states(proc.stdout)


def xfrm_policies(netns: str) -> str:
    proc = subprocess.run(["ip", "-n", netns, "xfrm", "policy"], capture_output=True,
                          text=True, timeout=60, check=True)
    return proc.stdout


def packets_by_spi(states: Sequence[XfrmState]) -> dict[int, int]:
    return {s.spi: s.packets for s in states}


# --------------------------------------------------------------------------- pytest fixture

DaemonFactory = Callable[..., XfrmctlDaemon]


@pytest.fixture
def xfrmctl_daemons(request: pytest.FixtureRequest, tmp_path: Path,
                    lab_results: Path) -> Iterator[DaemonFactory]:
    """Start daemons: ``xfrmctl_daemons(netns, "left", conf)``; all stopped after the test.

    Import it into a test module (``from tests.support.xfrmctl_daemon import
    xfrmctl_daemons``). When the test fails, each daemon's log and configuration are
    copied to ``<results>/daemon-logs/<test>/`` next to the charon logs.
    """
    started: list[tuple[str, XfrmctlDaemon]] = []

    def start(netns: str, name: str, conf: Mapping[str, Any], wait: bool = True,
              **kwargs: Any) -> XfrmctlDaemon:
        daemon = XfrmctlDaemon(netns, tmp_path / f"daemon-{name}", conf, **kwargs)
        started.append((name, daemon))
        daemon.start(wait)
        return daemon

    try:
        yield start
    finally:
        for _, daemon in reversed(started):
            daemon.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            keep_logs(lab_results, request.node.nodeid, [d for _, d in started])


def keep_logs(results: Path, nodeid: str, daemons: Sequence[XfrmctlDaemon]) -> Path:
    dest = results / "daemon-logs" / re.sub(r"[^\w.-]+", "_", nodeid)
    dest.mkdir(parents=True, exist_ok=True)
    for daemon in daemons:
        for path in (daemon.log_path, daemon.config_path):
            if path.exists():
                shutil.copy(path, dest / f"{daemon.workdir.name}-{path.name}")
    return dest


def wait_until(predicate: Callable[[], bool], timeout: float, what: Callable[[], str],
               interval: float = 0.5) -> None:
    """Poll ``predicate`` until true; after ``timeout`` seconds fail saying ``what()``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        time.sleep(interval)


def wait_installed(daemon: XfrmctlDaemon, after: int = 0, timeout: float = 120.0,
                   **fields: Any) -> Event:
    """The next ChildSaNegotiated (with ``fields``) and both of its SAs in the kernel of the
    daemon's namespace; fails on any error the daemon logs meanwhile (e.g. an install)."""
    event = daemon.wait_event("ChildSaNegotiated", timeout, after, **fields)
    spis = {int(event["spi_in"]), int(event["spi_out"])}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        errors = daemon.errors(after)
        if errors:
            raise DaemonError(f"{daemon.netns}: {errors[0]}\n{daemon.tail()}")
        if spis <= {s.spi for s in xfrm_states(daemon.netns)}:
            return event
        time.sleep(0.2)
    raise DaemonError(f"SAs {spis} not in the kernel of {daemon.netns}\n{daemon.tail()}")
