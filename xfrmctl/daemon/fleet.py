"""This daemon as one gateway of a fleet sharing a database.

`join` registers it (by name) and returns its membership; `heartbeats` keeps its row
fresh (with its current addresses) so the fleet view can tell it is reachable.
`listen_for_changes` (PostgreSQL only) hears the NOTIFY that every API process sends
when it commits a configuration change, so the change reaches this daemon at once
rather than at the next poll; after a lost connection it reconnects and re-reads the
whole configuration (changes made meanwhile were not heard).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import make_url

from xfrmctl import __version__
from xfrmctl.store import fleet
from xfrmctl.store.db import Database

log = logging.getLogger("xfrmctl.daemon.fleet")
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0  # seconds, doubling


@dataclass(frozen=True)
class Membership:
    id: int
    name: str
    interval: int

    def qualify(self, sa_id: str) -> str:
        """An SA id unique in the fleet: "<gateway>:<this daemon's id>"."""
        return f"{self.name}:{sa_id}"


def gateway_name(configured: str | None) -> str:
    return configured or socket.gethostname().split(".")[0]


async def join(db: Database, name: str, addresses: Sequence[str], interval: int
               ) -> Membership:
    row = await db.run(fleet.register_gateway, name, addresses, __version__,
                       interval=interval)
    log.info("gateway %s registered (heartbeat every %d s)", name, interval)
    return Membership(row.id, name, interval)


async def heartbeats(db: Database, member: Membership,
                     addresses: Callable[[], Sequence[str]]) -> None:
    """Heartbeat every interval; a database that is away is retried at the next beat
    (the fleet view shows this gateway unreachable meanwhile)."""
    failing = False
    while True:
        try:
            await db.run(fleet.heartbeat, member.id, list(addresses()))
            if failing:
                log.warning("heartbeat of gateway %s recorded again", member.name)
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("heartbeat of gateway %s not recorded: %s", member.name, exc)
            failing = True
        await asyncio.sleep(member.interval)


def libpq_url(url: str) -> str | None:
    """The libpq form of a SQLAlchemy PostgreSQL URL; None for other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_changes(url: str, changed: Callable[[], Awaitable[None]]) -> None:
    """Call `changed` after every burst of configuration NOTIFYs, and after each
    (re)connection (a resync: what was committed while not listening)."""
    import psycopg  # noqa: PLC0415 - PostgreSQL only

    wake = asyncio.Event()
    applier = asyncio.get_running_loop().create_task(_apply_changes(wake, changed))
    wait = RECONNECT_FIRST
    try:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        url, autocommit=True, keepalives=1, keepalives_idle=10,
                        keepalives_interval=5, keepalives_count=3) as conn:
                    await conn.execute(f"LISTEN {fleet.CHANGES_CHANNEL}")
                    if wait > RECONNECT_FIRST:
                        log.warning("listening for configuration changes again: resyncing")
                    wait = RECONNECT_FIRST
                    wake.set()  # resync: changes may have been committed unheard
                    async for _ in conn.notifies():
                        wake.set()
            except (psycopg.Error, OSError) as exc:
                if wait == RECONNECT_FIRST:
                    log.warning("not listening for configuration changes: %s; retrying", exc)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_MAX)
    finally:
        applier.cancel()


async def _apply_changes(wake: asyncio.Event, changed: Callable[[], Awaitable[None]]) -> None:
    """One reload per burst: notifications arriving during a reload cause one more."""
    while True:
        await wake.wait()
        wake.clear()
        try:
            await changed()
        except Exception as exc:  # a reload that fails is logged; the next one retries
            log.warning("applying configuration changes: %s", exc)
