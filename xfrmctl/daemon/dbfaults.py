"""Database faults in words an operator acts on: locked, read-only, full, corrupt.

The daemon never stops for them: the kernel keeps forwarding, IKE keeps negotiating, the
recorder keeps its rows and retries with back-off (it says so, once per back-off step);
at start a database that may come back is waited for, a corrupt one ends the process
with EX_CONFIG, which the systemd unit does not restart (no crash loop).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import DatabaseError as SqlDatabaseError
from sqlalchemy.exc import DBAPIError, OperationalError

EX_CONFIG = 78  # sysexits.h: the unit's RestartPreventExitStatus
RETRY_FIRST = 1.0  # seconds; doubling up to RETRY_MAX
RETRY_MAX = 60.0


@dataclass(frozen=True)
class DbFault:
    """What went wrong, as one sentence saying what to do; `transient`: it can pass
    (a lock, a full disk, a read-only mount) and is worth retrying."""

    kind: str  # locked, read-only, full, corrupt, unreachable
    sentence: str
    transient: bool


_KNOWN: tuple[tuple[str, tuple[str, ...], str, bool], ...] = (
    ("locked", ("database is locked", "database table is locked"),
     "the database is locked by another process (an open sqlite3 shell or a long "
     "transaction?): end it", True),
    ("read-only", ("readonly database", "read-only", "readonly"),
     "the database is read-only: check the file's owner and mode and that its file system "
     "is mounted read-write", True),
    ("full", ("database or disk is full", "no space left", "disk full"),
     "the disk holding the database is full: free some space", True),
    ("corrupt", ("malformed", "file is not a database", "not a database", "corrupt"),
     "the database file is corrupt: restore it from a backup, or move it away and run "
     "`xfrmctl db upgrade` (then import the configuration again)", False),
)


def classify(exc: BaseException) -> DbFault | None:
    """The fault behind a database exception, or None when it is not a database fault
    (e.g. a row the schema refuses: that is a bug, not the database)."""
    if not isinstance(exc, OperationalError | SqlDatabaseError | DBAPIError | OSError):
        return None
    text = str(getattr(exc, "orig", None) or exc).lower()
    for kind, needles, sentence, transient in _KNOWN:
        if any(n in text for n in needles):
            return DbFault(kind, sentence, transient)
    if isinstance(exc, OperationalError | OSError):  # unreachable server, I/O error ...
        return DbFault("unreachable", f"the database cannot be reached: {text}", True)
    return None


def classify_chain(exc: BaseException) -> DbFault | None:
    """`classify` of the exception or of the first of its causes that is a fault."""
    seen: BaseException | None = exc
    while seen is not None:
        fault = classify(seen)
        if fault is not None:
            return fault
        seen = seen.__cause__
    return None


def backoff(previous: float | None) -> float:
    """The next wait: RETRY_FIRST, then doubling up to RETRY_MAX."""
    return RETRY_FIRST if previous is None else min(RETRY_MAX, previous * 2)
