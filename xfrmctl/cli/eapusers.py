"""`xfrmctl eap-user`: remote-access users for EAP-MSCHAPv2. A password is read from a
file, stdin or a hidden prompt (asked twice), sent once; the daemon keeps only its NT hash,
encrypted, and nothing shows either."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import State, json_flag, pass_state
from .creds import _add_delete, _add_show, _done, read_value, resolve
from .output import ago, col, emit_json, emit_table

PATH = "/eap-users"


@click.group("eap-user")
def eap_user() -> None:
    """EAP users (EAP-MSCHAPv2 logins): passwords are write-only, stored as NT hashes."""


@eap_user.command("list")
@json_flag
@pass_state
def eap_user_list(state: State) -> None:
    rows = state.api.all(PATH)
    if state.json:
        emit_json(rows)
        return
    emit_table(rows, [col("ID", "id"), col("NAME", "name"), col("ENABLED", "enabled"),
                      col("VERSION", "version"),
                      ("CREATED", lambda r: ago(r.get("created_at"))),
                      ("UPDATED", lambda r: ago(r.get("updated_at")))])


_from_file = click.option("--password-file", "from_file",
                          type=click.Path(path_type=Path, dir_okay=False),
                          help="read the password from this file (else stdin, else a prompt)")
_version = click.option("--version", "version", help="your label for this password")


def _password(from_file: Path | None) -> str:
    return read_value(from_file, "eap")


@eap_user.command("create")
@click.argument("name")
@_from_file
@click.option("--disabled", is_flag=True, help="create it unable to log in")
@_version
@json_flag
@pass_state
def eap_user_create(state: State, name: str, from_file: Path | None, disabled: bool,
                    version: str | None) -> None:
    """Add a user; the password is never printed."""
    body: dict[str, Any] = {"name": name, "password": _password(from_file),
                            "enabled": not disabled}
    if version is not None:
        body["version"] = version
    created = state.api.request("POST", PATH, json=body)
    _done(state, created, f"created EAP user {name} (id {created['id']})")


@eap_user.command("passwd")
@click.argument("ref")
@_from_file
@_version
@json_flag
@pass_state
def eap_user_passwd(state: State, ref: str, from_file: Path | None,
                    version: str | None) -> None:
    """Give a user a new password (from the next login on)."""
    current = resolve(state, PATH, ref, "EAP user")
    body: dict[str, Any] = {"password": _password(from_file)}
    if version is not None:
        body["version"] = version
    updated = state.api.request("PATCH", f"{PATH}/{current['id']}", json=body)
    _done(state, updated, f"replaced the password of EAP user {current['name']}")


@eap_user.command("enable")
@click.argument("ref")
@click.option("--off", is_flag=True, help="disable: the user can no longer log in")
@json_flag
@pass_state
def eap_user_enable(state: State, ref: str, off: bool) -> None:
    current = resolve(state, PATH, ref, "EAP user")
    updated = state.api.request("PATCH", f"{PATH}/{current['id']}",
                                json={"enabled": not off})
    _done(state, updated, f"{'disabled' if off else 'enabled'} EAP user {current['name']}")


_add_show(eap_user, PATH, "EAP user")
_add_delete(eap_user, PATH, "EAP user")
