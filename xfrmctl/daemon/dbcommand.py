"""`xfrmctl db import FILE`: load a daemon configuration file, or strongSwan's
swanctl.conf, into the database.

Works on the database directly (like `db upgrade`), with the secrets key of the
settings; it adds `import` to the `xfrmctl db` group. A running daemon notices the
change through the database's audit log within seconds (main.WATCH_INTERVAL) and
applies it: no signal or API token needed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from xfrmctl.cli import State, json_flag, pass_state
from xfrmctl.cli.admin import db
from xfrmctl.cli.output import emit_json
from xfrmctl.config import Settings
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import MigrationError
from xfrmctl.store.secrets import SecretBox, SecretKeyError

from . import conf as cf
from . import swanctl
from .dbconfig import FileRefused, describe, import_conf, load_file, prepare_database


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
    settings = Settings()
    url = database_url or settings.database_url
    try:
        conf, unsupported = _read(path, fmt)
    except ValidationError as exc:
        _fail(f"{path}: {describe(exc)}; nothing imported", 7)
    except (ValueError, OSError) as exc:
        _fail(f"{exc}; nothing imported", 7)
    try:
        prepare_database(url)
        box = SecretBox.from_file(settings.secret_key_file)
    except (SQLAlchemyError, MigrationError, SecretKeyError, OSError) as exc:
        _fail(f"database: {exc}", 1)
    database = Database(url)
    try:
        names = database.call(import_conf, box, conf, actor=f"import:{path.name}")
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


def _read(path: Path, fmt: str) -> tuple[cf.DaemonConf, list[str]]:
    if fmt == "swanctl" or (fmt == "auto" and swanctl.looks_like_swanctl(path)):
        return swanctl.load(path)
    try:
        return load_file(path), []
    except FileRefused as exc:
        raise ValueError(str(exc)) from exc


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
