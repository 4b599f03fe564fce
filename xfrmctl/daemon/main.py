"""`xfrmctl daemon`: the gateway process.

One asyncio loop runs the IKE endpoints, the controller and (optionally) the REST API.
The database (XFRMCTL_DATABASE_URL, SQLite by default, created and migrated at start) is
always the configuration (see dbconfig.py): REST changes apply at once and the recorder
writes SAs and events into it. With `--config FILE` the file is applied into it at start
and on SIGHUP (all or nothing: a refused file changes nothing and says why); the
connections it brings are managed by the file, the API's are left alone.
`--kernel memory` runs against the in-memory kernel (no root, no ESP needed): for
trying the API, CLI and dashboard; nothing reaches the real kernel.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from xfrmctl.config import Settings
from xfrmctl.kernel.interface import KernelIPsec
from xfrmctl.kernel.links import KernelLinks
from xfrmctl.kernel.nft import FakeFirewall, NftFirewall

from . import conf as cf
from .controller import Controller
from .endpoint import Endpoints
from .state import StateFile

if TYPE_CHECKING:
    from .dbconfig import Applied, DbSource

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

    return await NetlinkKernel.open(groups=DAEMON_GROUPS, address_events=True)


async def open_links() -> KernelLinks:
    return await KernelLinks.open()


async def _open_kernel(kind: str) -> tuple[KernelIPsec, KernelLinks | None]:
    if kind == MEMORY:
        from xfrmctl.kernel.fake import FakeKernel  # noqa: PLC0415

        log.warning("KERNEL IN MEMORY: SAs and policies are NOT installed into the Linux "
                    "kernel and no traffic is protected (--kernel memory is for trying "
                    "the API, CLI and dashboard)")
        return FakeKernel(), None
    return await open_kernel(), await open_links()


MEMORY = "memory"
# How often the daemon looks for configuration written by another process (`db import`,
# another gateway's API on a shared PostgreSQL): one indexed query on the audit log.
WATCH_INTERVAL = 2.0


async def run(config_path: Path | None, *, api: bool = False, state_dir: Path | None = None,
              clear_on_exit: bool = False, listen: Sequence[str] = (),
              kernel_kind: str = "netlink", record: bool = True,
              gateway: str | None = None) -> int:
    """The configuration is the database's (settings); `config_path` is applied into it.
    The daemon is the fleet gateway `gateway` (default: settings, else the host name)."""
    try:
        opened = await _wait_for_database(listen, gateway)
        if isinstance(opened, int):
            return opened
        source, conf = opened
        if config_path is not None:
            applied = await _apply_file(source, config_path)
            log.info("applied %s: %s", config_path, applied.summary())
            conf = await source.load()
    except (OSError, ValueError, ValidationError) as exc:
        log.error("configuration %s: %s", config_path or "from the database", exc)
        return 2
    announced: list[str] = list(conf.listen)  # the addresses the heartbeats report
    # heartbeats from now on: the rest of the start (the API's imports) takes seconds
    beats = asyncio.get_running_loop().create_task(
        _heartbeats(source, lambda: announced), name="heartbeats")
    kernel, links = await _open_kernel(kernel_kind)
    state = StateFile(state_dir / "state.bin", state_dir / "state.key") if state_dir else None
    firewall = FakeFirewall() if kernel_kind == MEMORY else NftFirewall()
    controller = Controller(conf, kernel, state=state, links=links, firewall=firewall)
    controller.kernel_kind = kernel_kind
    controller.config_source = source.load
    controller.load_problems = source.not_loaded
    from .recorder import Recorder  # noqa: PLC0415

    recorder = Recorder(controller, source.db, member=source.member) if record else None
    endpoints = Endpoints(controller.receive)
    # pyroute2's synchronous API runs its own event loop: not on this one
    addresses = conf.listen or await asyncio.to_thread(local_addresses)
    announced[:] = addresses
    if not addresses:
        log.warning("no address to listen on (only loopback here): set `listen` in the "
                    "file or --listen")
    await endpoints.open(addresses, conf.ike_port, conf.nat_port)
    controller.send = endpoints.send
    controller.keepalive = endpoints.send_keepalive
    if not conf.listen:  # MOBIKE: the IKE sockets follow the addresses that come and go
        ports = (conf.ike_port, conf.nat_port)
        controller.mobility.sync_sockets = lambda a: endpoints.sync(list(a), *ports)
    log.info("listening on %s (ports %d, %d)", ", ".join(addresses), conf.ike_port,
             conf.nat_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def sighup() -> None:
        task = loop.create_task(_reload(controller, source, config_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, sighup)
    servers: list[Any] = []
    server_task: asyncio.Future[list[Any]] | None = None
    if api:
        servers = _api_servers(controller, source)
        # Server._serve: serve without uvicorn taking over the daemon's signal handlers.
        server_task = asyncio.gather(*(s._serve() for s in servers))
    await controller.start()
    if recorder is not None:
        await recorder.start()
    watcher = loop.create_task(_watch_database(controller, source), name="db-watch")
    notify_systemd("READY=1")
    await stop.wait()
    notify_systemd("STOPPING=1")
    log.info("stopping")
    for task in (watcher, beats):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await controller.stop(keep_tunnels=False if clear_on_exit else None)
    endpoints.close()
    if server_task is not None:
        for server in servers:
            server.should_exit = True  # a clean shutdown rather than a cancelled one
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server_task, 5)
    if recorder is not None:
        await recorder.stop()
    source.db.dispose()
    if links is not None:
        await links.close()
    await kernel.close()
    return 0


async def _apply_file(source: DbSource, path: Path) -> Applied:
    """Apply a daemon file into the database (all or nothing; FileRefused says why)."""
    from xfrmctl.store.repo import Conflict  # noqa: PLC0415

    from .dbconfig import FileRefused, apply_conf, file_origin, load_file  # noqa: PLC0415

    conf = await asyncio.to_thread(load_file, path)
    try:
        applied = await source.db.run(apply_conf, source.box, conf, file_origin(path),
                                      actor=f"file:{path.name}")
    except (FileRefused, Conflict) as exc:
        raise FileRefused(f"{path}: {exc}; nothing applied") from exc
    source.base = conf.model_copy(update={"connections": {}})
    for name in applied.ignored:
        log.warning("%s: connection %s is not applied: the database has it as not managed "
                    "by this file (created through the API, or taken over); remove it from "
                    "the file, or delete the database's one", path, name)
    return applied


async def _reload(controller: Controller, source: DbSource, path: Path | None) -> None:
    """SIGHUP: apply the file (if any) into the database, then load the database. Every
    failure is logged here: a refused file leaves the running configuration as it was."""
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from xfrmctl.port import ActionRejected  # noqa: PLC0415

    from .dbconfig import FileRefused  # noqa: PLC0415

    try:
        summary = "database re-read"
        if path is not None:
            summary = (await _apply_file(source, path)).summary()
        await controller.config_changed("connection", 0, "updated")
    except FileRefused as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return
    except (SQLAlchemyError, ActionRejected, OSError) as exc:
        log.error("reload of %s failed: %s", path or "the database", exc)
        return
    except Exception:  # never "Task exception was never retrieved"
        log.exception("reload of %s failed", path or "the database")
        return
    log.info("reloaded %s: %s", path or "the database", summary)


async def _heartbeats(source: DbSource, addresses: Callable[[], Sequence[str]]) -> None:
    from .fleet import heartbeats  # noqa: PLC0415

    if source.member is not None:
        await heartbeats(source.db, source.member, addresses)


async def _watch_database(controller: Controller, source: DbSource) -> None:
    """Apply configuration changes other processes write (they leave audit records; on
    PostgreSQL they also NOTIFY, heard at once)."""
    from .dbconfig import last_change  # noqa: PLC0415
    from .fleet import libpq_url, listen_for_changes  # noqa: PLC0415

    async def reload_if_new() -> None:
        # a change this daemon's own API made was applied already (no second reload)
        if await source.db.run(last_change) != source.applied:
            await controller.config_changed("connection", 0, "updated")

    url = libpq_url(str(source.db.engine.url.render_as_string(hide_password=False)))
    if url is not None:
        await listen_for_changes(url, reload_if_new)
        return
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        try:
            await reload_if_new()
        except Exception as exc:  # the database may be away for a moment: try again
            log.warning("checking the database for changes: %s", exc)


async def _wait_for_database(listen: Sequence[str], gateway: str | None
                             ) -> tuple[DbSource, cf.DaemonConf] | int:
    """Open the database and read the configuration. A database that is locked,
    read-only or full is waited for with back-off, saying so (the kernel keeps forwarding
    the tunnels meanwhile; systemd hears the status, not a failure to restart on); a
    corrupt one ends the start with EX_CONFIG (the unit does not restart on it)."""
    from . import dbfaults  # noqa: PLC0415 - database mode only

    wait: float | None = None
    while True:
        try:
            source = await _database_source(listen, gateway)
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


async def _database_source(listen: Sequence[str], gateway: str | None) -> DbSource:
    """Database mode: imported only then, so file mode never loads SQLAlchemy/Alembic.
    The daemon registers itself as a gateway of the fleet on the database."""
    from .dbconfig import DatabaseUnavailable, open_source  # noqa: PLC0415
    from .fleet import gateway_name, join  # noqa: PLC0415

    settings = Settings()
    try:
        source = await open_source(settings, cf.DaemonConf(listen=list(listen)))
    except DatabaseUnavailable as exc:
        raise ValueError(str(exc)) from exc
    try:
        source.member = await join(source.db, gateway_name(gateway or settings.gateway_name),
                                   list(listen), settings.heartbeat_interval)
    except BaseException:
        source.db.dispose()
        raise
    return source


def _api_servers(controller: Controller, source: DbSource) -> list[Any]:
    """The REST API's servers for this loop: a unix socket and loopback TCP (settings)."""
    import uvicorn  # noqa: PLC0415 - the API is optional

    from api.main import create_app  # noqa: PLC0415
    from api.server import server_configs  # noqa: PLC0415
    from xfrmctl.store.bus import EventBus  # noqa: PLC0415

    settings = Settings()
    # The daemon's own db and bus, so recorded events reach the SSE stream.
    app = create_app(settings, controller=controller, db=source.db,
                     bus=EventBus(), gateway=source.member.name if source.member else None)
    return [uvicorn.Server(c) for c in server_configs(app, settings)]
