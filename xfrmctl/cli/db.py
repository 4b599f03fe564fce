"""`xfrmctl db`: the database itself (schema migrations, importing configuration files).

Works on the database directly, with the settings' URL and secrets key; no API token.
A running daemon notices an import through the database's audit log within seconds
(daemon.main.WATCH_INTERVAL) and applies it: no signal needed.

`db import` reads files with the daemon's configuration model: that module is imported
inside the command (so `xfrmctl --help` and `db upgrade` never load it), the one place
besides `xfrmctl daemon` where the CLI uses daemon code (pyproject's import contracts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from xfrmctl.config import Settings
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import MigrationError, upgrade
from xfrmctl.store.secrets import SecretBox, SecretKeyError

from . import State, json_flag, pass_state
from .output import emit_json


@click.group()
def db() -> None:
    """The database."""


@db.command("upgrade")
@click.option("--database-url", envvar="XFRMCTL_DATABASE_URL",
              help="default: settings (XFRMCTL_DATABASE_URL or the config file)")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(database_url: str | None, revision: str) -> None:
    """Create or migrate the schema (Alembic) up to `revision`."""
    upgrade(database_url or Settings().database_url, revision)
    click.echo(f"database at {revision}", err=True)


@db.command("import")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--database-url", envvar="XFRMCTL_DATABASE_URL",
              help="default: settings (XFRMCTL_DATABASE_URL or the config file)")
@click.option("--format", "fmt", type=click.Choice(["auto", "xfrmctl", "swanctl"]),
              default="auto", show_default=True,
              help="auto: swanctl for *.conf / swanctl*, else the daemon's YAML/TOML")
@json_flag
@pass_state
def db_import(state: State, path: Path, database_url: str | None, fmt: str) -> None:
    """Create the connections of a daemon file (YAML/TOML) or a swanctl.conf with their
    children and secrets (encrypted); all or nothing, names must be new. They are
    managed through the API/CLI from then on; a running daemon applies them within
    seconds. Every swanctl setting that cannot be mapped is listed."""
    from xfrmctl.daemon import dbconfig  # noqa: PLC0415 - the daemon's file model, on use

    settings = Settings()
    url = database_url or settings.database_url
    try:
        conf, unsupported = dbconfig.read_import(path, fmt)
    except ValidationError as exc:
        _fail(f"{path}: {dbconfig.describe(exc)}; nothing imported", 7)
    except (ValueError, OSError) as exc:
        _fail(f"{exc}; nothing imported", 7)
    try:
        dbconfig.prepare_database(url)
        box = SecretBox.from_file(settings.secret_key_file)
    except (SQLAlchemyError, MigrationError, SecretKeyError, OSError) as exc:
        _fail(f"database: {exc}", 1)
    database = Database(url)
    try:
        names = database.call(dbconfig.import_conf, box, conf, actor=f"import:{path.name}")
    except repo.Conflict as exc:
        _fail(f"{path}: {exc}; nothing imported", 6)
    except (ValueError, OSError, SecretKeyError) as exc:
        _fail(f"{path}: {exc}; nothing imported", 1)
    finally:
        database.dispose()
    if state.json:
        emit_json({"imported": names, "not_imported": unsupported})
        return
    click.echo(f"imported {len(names)} connection(s): {', '.join(names) or '-'}")
    if unsupported:
        click.echo(f"not imported ({len(unsupported)} setting(s)):")
        for line in unsupported:
            click.echo(f"  {line}")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
