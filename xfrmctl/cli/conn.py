"""`xfrmctl conn`: list, show, add, edit, delete, up, down."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import State, json_flag, pass_state
from .live import resolve_connection
from .output import col, emit_fields, emit_json, emit_table


@click.group()
def conn() -> None:
    """Configured connections (desired state)."""


@conn.command("list")
@json_flag
@pass_state
def conn_list(state: State) -> None:
    rows = state.api.all("/connections")
    if state.json:
        emit_json(rows)
        return
    emit_table(rows, [col("ID", "id"), col("NAME", "name"), col("ENABLED", "enabled"),
                      ("MANAGED_BY", lambda r: (r.get("managed_by") or "api")
                       .removeprefix("file:")),
                      col("LOCAL", "local_addrs"), col("REMOTE", "remote_addrs"),
                      col("AUTH", "auth"), col("START", "start_action"),
                      col("IKE_PROPOSALS", "ike_proposals")])


@conn.command("show")
@click.argument("ref")
@json_flag
@pass_state
def conn_show(state: State, ref: str) -> None:
    """A connection and its children."""
    data = resolve_connection(state, ref)
    children = state.api.all(f"/connections/{data['id']}/children")
    if state.json:
        emit_json({**data, "children": children})
        return
    emit_fields(data)
    for child in children:
        click.echo(f"\nchild {child['name']} (id {child['id']})")
        emit_fields({k: v for k, v in child.items() if k not in ("name", "id")})


def _connection_options(fn: Any) -> Any:
    options = [
        click.option("--local-addr", "local_addrs", multiple=True, help="repeatable"),
        click.option("--remote-addr", "remote_addrs", multiple=True, help="repeatable"),
        click.option("--local-id"), click.option("--remote-id"),
        click.option("--auth", type=click.Choice(["psk", "pubkey"])),
        click.option("--secret", "secret_ref", help="existing secret (name or id)"),
        click.option("--psk-stdin", is_flag=True,
                     help="read a PSK from stdin and store it as secret '<name>-psk'"),
        click.option("--ike-proposals"),
        click.option("--start-action", type=click.Choice(["none", "start", "trap"])),
        click.option("--dpd-delay", type=int),
        click.option("--dpd-action", type=click.Choice(["clear", "restart", "trap"])),
        click.option("--rekey-time", type=int),
        click.option("--enable/--disable", "enabled", default=None),
        click.option("--set", "extra", multiple=True, metavar="FIELD=VALUE",
                     help="any other connection field (repeatable; VALUE as JSON or text)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _parse_extra(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        field, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not FIELD=VALUE", param_hint="--set")
        try:
            out[field] = json.loads(raw)
        except json.JSONDecodeError:
            out[field] = raw
    return out


def _body(state: State, name: str | None, opts: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {k: v for k, v in opts.items()
                            if k not in ("secret_ref", "psk_stdin", "extra") and v not in
                            (None, ())}
    body |= {k: list(v) for k, v in body.items() if isinstance(v, tuple)}
    body |= _parse_extra(opts["extra"])
    if opts["psk_stdin"]:
        psk = sys.stdin.readline().rstrip("\n")
        if not psk:
            raise click.BadParameter("no PSK on stdin", param_hint="--psk-stdin")
        secret = state.api.request("POST", "/secrets", json={
            "name": f"{name}-psk", "kind": "psk", "value": psk})
        body["secret_id"] = secret["id"]
    elif opts["secret_ref"]:
        body["secret_id"] = _secret_id(state, opts["secret_ref"])
    return body


def _secret_id(state: State, ref: str) -> int:
    if ref.isdigit():
        return int(ref)
    for secret in state.api.all("/secrets"):
        if secret["name"] == ref:
            return int(secret["id"])
    raise click.BadParameter(f"no secret named {ref!r}", param_hint="--secret")


@conn.command("add")
@click.argument("name")
@_connection_options
@click.option("--child", "child_name", help="also add a child with this name")
@click.option("--local-ts", multiple=True, help="child's local traffic selector (repeatable)")
@click.option("--remote-ts", multiple=True, help="child's remote traffic selector")
@click.option("--esp-proposals", help="child's ESP proposals")
@json_flag
@pass_state
def conn_add(state: State, /, name: str, child_name: str | None, local_ts: tuple[str, ...],
             remote_ts: tuple[str, ...], esp_proposals: str | None, **opts: Any) -> None:
    """Add a connection (and optionally one child)."""
    created = state.api.request("POST", "/connections",
                                json={"name": name, **_body(state, name, opts)})
    result = dict(created)
    if child_name:
        child: dict[str, Any] = {"name": child_name}
        if local_ts:
            child["local_ts"] = list(local_ts)
        if remote_ts:
            child["remote_ts"] = list(remote_ts)
        if esp_proposals:
            child["esp_proposals"] = esp_proposals
        result["children"] = [state.api.request(
            "POST", f"/connections/{created['id']}/children", json=child)]
    if state.json:
        emit_json(result)
    else:
        click.echo(f"added connection {name} (id {created['id']})")


@conn.command("edit")
@click.argument("ref")
@click.option("--name", help="rename")
@_connection_options
@json_flag
@pass_state
def conn_edit(state: State, /, ref: str, name: str | None, **opts: Any) -> None:
    """Change fields of a connection; the daemon re-establishes it only if needed."""
    current = resolve_connection(state, ref)
    body = _body(state, current["name"], opts)
    if name:
        body["name"] = name
    if not body:
        raise click.UsageError("nothing to change")
    updated = state.api.request("PATCH", f"/connections/{current['id']}", json=body)
    emit_json(updated) if state.json else click.echo(f"updated connection {updated['name']}")


@conn.command("delete")
@click.argument("ref")
@json_flag
@pass_state
def conn_delete(state: State, ref: str) -> None:
    """Delete a connection; its SAs are torn down."""
    current = resolve_connection(state, ref)
    state.api.request("DELETE", f"/connections/{current['id']}")
    if state.json:
        emit_json({"deleted": current["id"]})
    else:
        click.echo(f"deleted connection {current['name']}")


def _action(state: State, ref: str, action: str) -> None:
    current = resolve_connection(state, ref)
    result = state.api.request("POST", f"/connections/{current['id']}/{action}")
    emit_json(result) if state.json else click.echo(f"{action}: {current['name']}")


@conn.command("takeover")
@click.argument("ref")
@json_flag
@pass_state
def conn_takeover(state: State, ref: str) -> None:
    """Manage a connection that came from the daemon's configuration file through the
    API/CLI from now on: the file no longer changes or removes it."""
    current = resolve_connection(state, ref)
    taken = state.api.request("POST", f"/connections/{current['id']}/takeover")
    if state.json:
        emit_json(taken)
    elif current.get("managed_by"):
        click.echo(f"took over connection {taken['name']} from "
                   f"{current['managed_by'].removeprefix('file:')}; remove it from that "
                   "file too")
    else:
        click.echo(f"connection {taken['name']} is already managed through the API")


@conn.command("up")
@click.argument("ref")
@json_flag
@pass_state
def conn_up(state: State, ref: str) -> None:
    """Initiate a connection."""
    _action(state, ref, "initiate")


@conn.command("down")
@click.argument("ref")
@json_flag
@pass_state
def conn_down(state: State, ref: str) -> None:
    """Terminate a connection's SAs."""
    _action(state, ref, "terminate")


@conn.command("rekey")
@click.argument("ref")
@json_flag
@pass_state
def conn_rekey(state: State, ref: str) -> None:
    """Rekey a connection's SAs."""
    _action(state, ref, "rekey")
