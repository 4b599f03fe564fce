"""Engine, sessions, and running repository work off the event loop.

Repository functions are plain synchronous `fn(session, ...)`; `Database.run` calls one
in a worker thread inside a transaction, so the asyncio loop never blocks on the database.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from .fleet import notify_changes
from .models import EventKind
from .repo import NEW_EVENTS, event_dict

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite, enforce foreign keys and create the file private."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            create_private_file(Path(path))
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def create_private_file(path: Path) -> None:
    """Make the SQLite file mode 0600 (its directory 0700 when created here): it holds
    token hashes and encrypted secrets. SQLite gives its journal and WAL files the
    database file's mode. An existing file readable by others is tightened, with a
    warning."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    try:  # O_EXCL: the mode given here is the mode the file is born with
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    except OSError:
        return  # e.g. a read-only directory: SQLite reports it when it connects
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was mode %o: making it %o", path, mode, mode & 0o700)
        try:
            path.chmod(mode & 0o700)
        except OSError as exc:
            log.warning("%s: cannot change its mode: %s", path, exc.strerror)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """Owns the engine and session factory; `run` executes a repository call in a thread."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer; a single worker keeps writes ordered, reads cheap.
        workers = 1 if url.startswith("sqlite") else 8
        self._limiter = anyio.CapacityLimiter(workers)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def call(self, fn: Callable[Concatenate[Session, P], T], *args: P.args,
             **kwargs: P.kwargs) -> T:
        """Run `fn(session, ...)` in one transaction, synchronously (not on the loop)."""
        return self._call(fn, *args, **kwargs)[0]

    def _call(self, fn: Callable[Concatenate[Session, P], T], *args: P.args,
              **kwargs: P.kwargs) -> tuple[T, list[dict[str, Any]]]:
        with self.sessions.begin() as session:
            result = fn(session, *args, **kwargs)
            session.flush()
            events = [event_dict(e) for e in session.info.pop(NEW_EVENTS, [])]
            notify_changes(session, [e for e in events if e["kind"] == EventKind.AUDIT])
        return result, events

    async def run(self, fn: Callable[Concatenate[Session, P], T], *args: P.args,
                  **kwargs: P.kwargs) -> T:
        """Run `fn(session, ...)` in one transaction in a worker thread; then hand the
        events it recorded (after commit) to every listener, on the loop."""
        def job() -> tuple[T, list[dict[str, Any]]]:
            return self._call(fn, *args, **kwargs)
        result, events = await anyio.to_thread.run_sync(job, limiter=self._limiter)
        for record in events:
            for listener in self.listeners:
                listener(record)
        return result

    def dispose(self) -> None:
        self.engine.dispose()
