"""A throwaway PostgreSQL cluster (initdb/pg_ctl as the `postgres` user, unix socket only,
in a temp dir), never the host's own service, started once per session. Skipped if the
binaries are absent. `fresh_database` makes a new empty database on it per user."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _run_as(user: str, *argv: str) -> None:
    prefix = [] if pwd.getpwuid(os.getuid()).pw_name == user else ["runuser", "-u", user, "--"]
    subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=60)


class Unavailable(Exception):
    """No throwaway server can be started here (the message says why)."""


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        with throwaway_postgres() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(str(exc))


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server in a temp dir for as long as the context lasts: its URL."""
    bindir = _pg_bin()
    if bindir is None:
        raise Unavailable("PostgreSQL binaries not installed (apt-get install postgresql)")
    user = "postgres"
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise Unavailable("no postgres system user to run the throwaway cluster as") from None
    if os.getuid() != 0 and os.getuid() != pw.pw_uid:
        raise Unavailable("need root or the postgres user to start a throwaway cluster")
    root = Path(tempfile.mkdtemp(prefix="xfrmctl-pg-"))
    os.chown(root, pw.pw_uid, pw.pw_gid)
    data, sock = root / "data", root / "sock"
    _run_as(user, "mkdir", str(sock))
    _run_as(user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user,
            "--no-sync", "-E", "UTF8")
    options = f"-k {sock} -c listen_addresses='' -c fsync=off"
    _run_as(user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w",
            "-l", str(root / "log"), "start")
    try:
        _run_as(user, str(bindir / "createdb"), "-h", str(sock), "-U", user, "xfrmctl")
        yield f"postgresql+psycopg://{user}@/xfrmctl?host={sock}"
    finally:
        _run_as(user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str, prefix: str = "t") -> str:
    """A new, empty database on the server of `url`; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    parsed = make_url(url)
    with psycopg.connect(dbname=parsed.database, user=parsed.username,
                         host=str(parsed.query["host"]), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return parsed.set(database=name).render_as_string(hide_password=False)
