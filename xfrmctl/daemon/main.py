"""`xfrmctl daemon`: the gateway process.

One asyncio loop runs the IKE endpoints, the controller and (optionally) the REST API.
File mode (`--config FILE`): SIGHUP reloads the file, touching only connections that
changed. Database mode (no --config): the database is the configuration (see
dbconfig.py), REST changes apply at once and the recorder writes SAs and events into it.
SIGTERM/SIGINT: with a state directory the tunnels stay in the kernel and the IKE SAs are
saved (encrypted) for the next process to take back, so a restart drops nothing; without
one (or with --clear-on-exit) our SAs are deleted, telling the peers. With systemd (Type=notify)
readiness is reported through NOTIFY_SOCKET.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from xfrmctl.config import Settings
from xfrmctl.kernel.interface import KernelIPsec
from xfrmctl.kernel.links import KernelLinks

from . import conf as cf
from .controller import Controller
from .endpoint import Endpoints
from .state import StateFile

if TYPE_CHECKING:
    from .dbconfig import DbSource
    from .recorder import Recorder

log = logging.getLogger("xfrmctl.daemon")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                                 "level": record.levelname.lower(), "logger": record.name,
                                 "message": record.getMessage()}
        event = getattr(record, "event", None)
        if event:
            entry["event"] = event
            entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(json_lines: bool, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("xfrmctl")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def notify_systemd(state: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


def local_addresses() -> list[str]:
    """Every non-loopback address of this namespace (when `listen` is not configured)."""
    from pyroute2 import IPRoute  # noqa: PLC0415 - only when listen is unset

    with IPRoute() as ipr:
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]
    return [a for a in addrs if a and not a.startswith("127.") and a != "::1"
            and not a.startswith("fe80")]


async def open_kernel() -> KernelIPsec:
    from xfrmctl.kernel.netlink import DAEMON_GROUPS, NetlinkKernel  # noqa: PLC0415

    return await NetlinkKernel.open(groups=DAEMON_GROUPS)


async def open_links() -> KernelLinks:
    return await KernelLinks.open()


async def run(config_path: Path | None, *, api: bool = False, state_dir: Path | None = None,
              clear_on_exit: bool = False, listen: Sequence[str] = ()) -> int:
    """With `config_path` None the configuration comes from the database (settings)."""
    source: DbSource | None = None
    try:
        if config_path is None:
            opened = await _wait_for_database(listen)
            if isinstance(opened, int):
                return opened
            source, conf = opened
        else:
            conf = cf.load(config_path)
    except (OSError, ValueError, ValidationError) as exc:
        log.error("configuration %s: %s", config_path or "from the database", exc)
        return 2
    kernel = await open_kernel()
    state = StateFile(state_dir / "state.bin", state_dir / "state.key") if state_dir else None
    links = await open_links()
    controller = Controller(conf, kernel, state=state, links=links)
    recorder: Recorder | None = None
    if source is not None:
        from .recorder import Recorder  # noqa: PLC0415 - database mode only

        controller.config_source = source.load
        controller.load_problems = source.not_loaded
        recorder = Recorder(controller, source.db)
    endpoints = Endpoints(controller.receive)
    addresses = conf.listen or local_addresses()
    await endpoints.open(addresses, conf.ike_port, conf.nat_port)
    controller.send = endpoints.send
    controller.keepalive = endpoints.send_keepalive
    log.info("listening on %s (ports %d, %d)", ", ".join(addresses), conf.ike_port,
             conf.nat_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(
        _reload(controller, config_path)))
    servers: list[Any] = []
    server_task: asyncio.Future[list[Any]] | None = None
    if api:
        servers = _api_servers(controller, kernel, source)
        # Server._serve: serve without uvicorn taking over the daemon's signal handlers.
        server_task = asyncio.gather(*(s._serve() for s in servers))
    await controller.start()
    if recorder is not None:
        await recorder.start()
    notify_systemd("READY=1")
    await stop.wait()
    notify_systemd("STOPPING=1")
    log.info("stopping")
    await controller.stop(keep_tunnels=False if clear_on_exit else None)
    endpoints.close()
    if server_task is not None:
        for server in servers:
            server.should_exit = True  # a clean shutdown rather than a cancelled one
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server_task, 5)
    if recorder is not None and source is not None:
        await recorder.stop()
        source.db.dispose()
    await links.close()
    await kernel.close()
    return 0


async def _reload(controller: Controller, path: Path | None) -> None:
    if path is None:  # database mode: re-read it
        await controller.config_changed("connection", 0, "updated")
        return
    try:
        conf = cf.load(path)
    except (OSError, ValueError, ValidationError) as exc:
        log.error("reload of %s refused, keeping the running configuration: %s", path, exc)
        return
    changed = await controller.reload(conf)
    log.info("reloaded %s: %s", path, ", ".join(changed) or "nothing changed")


async def _wait_for_database(listen: Sequence[str]) -> tuple[DbSource, cf.DaemonConf] | int:
    """Open the database and read the configuration. A database that is locked,
    read-only or full is waited for with back-off, saying so (the kernel keeps forwarding
    the tunnels meanwhile; systemd hears the status, not a failure to restart on); a
    corrupt one ends the start with EX_CONFIG (the unit does not restart on it)."""
    from . import dbfaults  # noqa: PLC0415 - database mode only

    wait: float | None = None
    while True:
        try:
            source = await _database_source(listen)
            return source, await source.load()
        except Exception as exc:
            fault = dbfaults.classify_chain(exc)
            if fault is None or fault.kind == "unreachable":
                raise
            if not fault.transient:
                log.error("configuration from the database: %s", fault.sentence)
                return dbfaults.EX_CONFIG
            wait = dbfaults.backoff(wait)
            log.error("configuration from the database: %s; retrying in %.0f s (the kernel "
                      "keeps forwarding the tunnels)", fault.sentence, wait)
            notify_systemd(f"STATUS=waiting for the database: {fault.sentence}\n"
                           f"EXTEND_TIMEOUT_USEC={int((wait + 60) * 1e6)}")
            await asyncio.sleep(wait)


async def _database_source(listen: Sequence[str]) -> DbSource:
    """Database mode: imported only then, so file mode never loads SQLAlchemy/Alembic."""
    from .dbconfig import DatabaseUnavailable, open_source  # noqa: PLC0415

    try:
        return await open_source(Settings(), cf.DaemonConf(listen=list(listen)))
    except DatabaseUnavailable as exc:
        raise ValueError(str(exc)) from exc


def _api_servers(controller: Controller, kernel: KernelIPsec,
                 source: DbSource | None = None) -> list[Any]:
    """The REST API's servers for this loop: a unix socket and loopback TCP (settings)."""
    import uvicorn  # noqa: PLC0415 - the API is optional

    from api.main import create_app  # noqa: PLC0415
    from api.server import server_configs  # noqa: PLC0415
    from xfrmctl.store.bus import EventBus  # noqa: PLC0415

    settings = Settings()
    # Database mode: the daemon's own db and bus, so recorded events reach the SSE stream.
    db, bus = (source.db, EventBus()) if source is not None else (None, None)
    app = create_app(settings, controller=controller, kernel=kernel, db=db, bus=bus)
    return [uvicorn.Server(c) for c in server_configs(app, settings)]
