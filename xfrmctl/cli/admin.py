"""`xfrmctl token`: API tokens (through the API, or `--local` on the database)."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from xfrmctl.config import Settings
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import current_tables
from xfrmctl.store.tokens import Scope

from . import State, json_flag, pass_state
from .client import EXIT_CONFLICT, EXIT_ERROR, ApiError
from .output import col, emit_json, emit_table


@click.group()
def token() -> None:
    """API tokens (needs an admin token, or --local with access to the database)."""


@token.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice([s.value for s in Scope]), help="read, operate or admin")
@click.option("--local", is_flag=True,
              help="write to the database directly (bootstrap the first admin token)")
@click.option("--database-url", envvar="XFRMCTL_DATABASE_URL", help="with --local")
@json_flag
@pass_state
def token_create(state: State, name: str, scopes: tuple[str, ...], local: bool,
                 database_url: str | None) -> None:
    """Create a token; it is printed once and cannot be shown again."""
    if local:
        created: dict[str, Any] = _create_local(database_url or Settings().database_url,
                                                name, scopes)
    else:
        created = state.api.request("POST", "/tokens",
                                    json={"name": name, "scopes": list(scopes)})
    if state.json:
        emit_json(created)
    else:
        click.echo(created["token"])
        click.echo(f"token {name} (id {created['id']}) created; store it now, it is not "
                   "shown again", err=True)


def _create_local(url: str, name: str, scopes: tuple[str, ...]) -> dict[str, Any]:
    """Write a token straight to the database; a missing schema or an unreachable
    database is a sentence saying what to do, not a traceback."""
    where = redact_url(url)
    try:
        tables = current_tables(url)
    except SQLAlchemyError as exc:
        raise ApiError(f"cannot open the database {where}: {_why(exc)}", EXIT_ERROR) from None
    if "api_tokens" not in tables:
        raise ApiError(f"the database {where} has no schema yet: run `xfrmctl db upgrade` "
                       "first (with the same --database-url / XFRMCTL_DATABASE_URL)",
                       EXIT_ERROR)
    db = Database(url)
    try:
        row, plaintext = db.call(repo.create_token, name=name,
                                 scopes=[Scope(s) for s in scopes], actor="cli:local")
    except IntegrityError:
        raise ApiError(f"a token named {name!r} exists already in {where}",
                       EXIT_CONFLICT) from None
    except SQLAlchemyError as exc:
        raise ApiError(f"cannot write to the database {where}: {_why(exc)}",
                       EXIT_ERROR) from None
    finally:
        db.dispose()
    return {"id": row.id, "name": row.name, "scopes": row.scopes, "prefix": row.prefix,
            "token": plaintext}


def _why(exc: SQLAlchemyError) -> str:
    """The driver's own message, first line (SQLAlchemy's adds the SQL and a link)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: say so as it was given
        return url


@token.command("list")
@json_flag
@pass_state
def token_list(state: State) -> None:
    rows = state.api.all("/tokens")
    if state.json:
        emit_json(rows)
        return
    emit_table(rows, [col("ID", "id"), col("NAME", "name"), col("PREFIX", "prefix"),
                      col("SCOPES", "scopes"), col("CREATED", "created_at"),
                      col("EXPIRES", "expires_at"), col("REVOKED", "revoked_at")])


@token.command("revoke")
@click.argument("ref")
@json_flag
@pass_state
def token_revoke(state: State, ref: str) -> None:
    """Revoke a token (by id or name); it stops working at once."""
    token_id = ref if ref.isdigit() else next(
        (str(t["id"]) for t in state.api.all("/tokens") if t["name"] == ref), None)
    if token_id is None:
        raise click.BadParameter(f"no token named {ref!r}", param_hint="REF")
    state.api.request("DELETE", f"/tokens/{token_id}")
    emit_json({"revoked": int(token_id)}) if state.json else click.echo(f"revoked {ref}")

