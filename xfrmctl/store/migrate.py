"""Run Alembic migrations programmatically (`xfrmctl db upgrade`).

Alembic is imported only when a migration runs: a daemon whose database is already at
HEAD_REVISION (the usual start) reads the version table with one query instead, which
saves its start ~0.3 s (half a minute in the lab's VM without KVM).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from .db import make_engine

if TYPE_CHECKING:
    from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]
# The newest revision in migrations/versions (tests/store/test_migrations.py checks it
# against Alembic's own view): bump it with each new migration.
HEAD_REVISION = "0007"
VERSION_TABLE = "alembic_version"


class MigrationError(Exception):
    """Alembic refused a migration (its CommandError, without importing Alembic to catch it)."""


def alembic_config(url: str) -> Config:
    from alembic.config import Config  # noqa: PLC0415 - see the module docstring

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command  # noqa: PLC0415
    from alembic.util import CommandError  # noqa: PLC0415

    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc


def downgrade(url: str, revision: str) -> None:
    from alembic import command  # noqa: PLC0415

    command.downgrade(alembic_config(url), revision)


def stamp_head(connection: Connection, url: str) -> None:
    """Record the head revision, in the transaction that made the schema from the models."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    script = ScriptDirectory.from_config(alembic_config(url))
    MigrationContext.configure(connection).stamp(script, "head")


def schema_revision(connection: Connection) -> str | None:
    """The revision the database is at, or None for a database Alembic never touched."""
    if VERSION_TABLE not in inspect(connection).get_table_names():
        return None
    return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def current_tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
