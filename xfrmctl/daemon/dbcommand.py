"""`xfrmctl db import FILE`: load a daemon configuration file into the database.

Works on the database directly (like `db upgrade`), with the secrets key of the
settings; it adds `import` to the `xfrmctl db` group.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
from alembic.util import CommandError
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from xfrmctl.cli import State, json_flag, pass_state
from xfrmctl.cli.admin import db
from xfrmctl.cli.output import emit_json
from xfrmctl.config import Settings
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.secrets import SecretBox, SecretKeyError

from .dbconfig import describe, import_file, prepare_database


@db.command("import")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--database-url", envvar="XFRMCTL_DATABASE_URL",
              help="default: settings (XFRMCTL_DATABASE_URL or the config file)")
@json_flag
@pass_state
def db_import(state: State, path: Path, database_url: str | None) -> None:
    """Create the connections of a daemon file (YAML/TOML) with their children and
    secrets (encrypted); all or nothing, names must be new."""
    settings = Settings()
    url = database_url or settings.database_url
    try:
        prepare_database(url)
        box = SecretBox.from_file(settings.secret_key_file)
    except (SQLAlchemyError, CommandError, SecretKeyError, OSError) as exc:
        _fail(f"database: {exc}", 1)
    database = Database(url)
    try:
        names = import_file(database, box, path)
    except ValidationError as exc:
        _fail(f"{path}: {describe(exc)}", 7)
    except repo.Conflict as exc:
        _fail(f"{path}: {exc}; nothing imported", 6)
    except (ValueError, OSError, SecretKeyError) as exc:
        _fail(f"{path}: {exc}; nothing imported", 1)
    finally:
        database.dispose()
    if state.json:
        emit_json({"imported": names})
    else:
        click.echo(f"imported {len(names)} connection(s): {', '.join(names) or '-'}")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
