"""`xfrmctl conn`: list, show, add, edit, delete, up, down."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any

import click

from . import State, json_flag, pass_state
from .client import EXIT_ERROR, ApiError
from .live import resolve_child_sas, resolve_connection
from .output import col, emit_fields, emit_json, emit_table, why


@click.group()
def conn() -> None:
    """Configured connections (desired state)."""


@conn.command("list")
@json_flag
@pass_state
def conn_list(state: State) -> None:
    """Connections with their children: selectors and proposals (swanctl --list-conns)."""
    rows = state.api.all("/connections", gateway=state.gateway)
    children: dict[int, list[dict[str, Any]]] = {}
    for child in state.api.all("/children"):
        children.setdefault(child["connection_id"], []).append(child)
    if state.json:
        emit_json([{**r, "children": children.get(r["id"], [])} for r in rows])
        return
    emit_table(rows, [col("ID", "id"), col("NAME", "name"), col("ENABLED", "enabled"),
                      ("MANAGED_BY", lambda r: (r.get("managed_by") or "api")
                       .removeprefix("file:")),
                      col("LOCAL", "local_addrs"), col("REMOTE", "remote_addrs"),
                      col("AUTH", "auth"), col("START", "start_action"),
                      ("IKE", lambda r: _short(r.get("ike_proposals")))])
    names = {r["id"]: r["name"] for r in rows}
    listed = [{**c, "conn": names.get(c["connection_id"], c["connection_id"])}
              for r in rows for c in children.get(r["id"], [])]
    if listed:
        click.echo()
        emit_table(listed, [
            col("CONN", "conn"), col("CHILD", "name"), col("MODE", "mode"),
            ("SELECTORS", lambda c: f"{','.join(c.get('local_ts') or ['dynamic'])} === "
                                    f"{','.join(c.get('remote_ts') or ['dynamic'])}"),
            ("ESP", lambda c: _short(c.get("esp_proposals") or c.get("ah_proposals")))])


def _short(proposals: str | None) -> str | None:
    """Proposals as swanctl writes them: keywords joined by '-', proposals by ','."""
    if not proposals:
        return None
    return ",".join(p.strip().lower() for p in proposals.split(",") if p.strip())


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


def _body(state: State, name: str | None, opts: dict[str, Any],
          made: list[str] | None = None) -> dict[str, Any]:
    """The request body from the options; a secret it creates is added to `made` (API
    paths to delete if a later step of the command is refused)."""
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
        if made is not None:
            made.append(f"/secrets/{secret['id']}")
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
    """Add a connection (and optionally one child): all or nothing, a refused step
    deletes what the earlier ones created (no orphaned secret or childless connection)."""
    made: list[str] = []
    try:
        created = state.api.request("POST", "/connections",
                                    json={"name": name, **_body(state, name, opts, made)})
        made.append(f"/connections/{created['id']}")
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
    except ApiError:
        _undo(state, made)
        raise
    if state.json:
        emit_json(result)
    else:
        click.echo(f"added connection {name} (id {created['id']})")


def _undo(state: State, made: list[str]) -> None:
    """Delete what a refused command created, newest first (best effort: the command's
    own error is the one reported)."""
    for path in reversed(made):
        with contextlib.suppress(ApiError):
            state.api.request("DELETE", path)


@conn.command("edit")
@click.argument("ref")
@click.option("--name", help="rename")
@_connection_options
@json_flag
@pass_state
def conn_edit(state: State, /, ref: str, name: str | None, **opts: Any) -> None:
    """Change fields of a connection; the daemon re-establishes it only if needed."""
    current = resolve_connection(state, ref)
    made: list[str] = []
    body = _body(state, current["name"], opts, made)
    if name:
        body["name"] = name
    if not body:
        raise click.UsageError("nothing to change")
    try:
        updated = state.api.request("PATCH", f"/connections/{current['id']}", json=body)
    except ApiError:
        _undo(state, made)
        raise
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
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="seconds to wait for the connection and its children")
@click.option("--no-wait", is_flag=True, help="return once the daemon started it")
@json_flag
@pass_state
def conn_up(state: State, ref: str, timeout: float, no_wait: bool) -> None:
    """Initiate a connection and wait until it and its children are up; on failure exit
    1 with the reason (e.g. TS_UNACCEPTABLE and the selectors)."""
    current = resolve_connection(state, ref)
    result = state.api.request("POST", f"/connections/{current['id']}/initiate")
    if no_wait:
        emit_json(result) if state.json else click.echo(f"initiate: {current['name']}")
        return
    status = _wait_up(state, current, timeout)
    if state.json:
        emit_json(status)
    else:
        sas = ", ".join(status["ike_sa_ids"]) or "-"
        click.echo(f"connection {current['name']} up (IKE_SA {sas}); children: "
                   + (", ".join(c["name"] for c in status.get("children", [])) or "-"))


POLL_INTERVAL = 0.25


def _wait_up(state: State, conn: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll /status until the connection and every child is up, or one failed."""
    deadline = time.monotonic() + timeout
    while True:
        status = next((c for c in state.api.get("/status")["connections"]
                       if c["id"] == conn["id"]), None)
        if status is None:
            raise ApiError(f"connection {conn['name']} is gone", EXIT_ERROR)
        failure = _failure(status)
        if failure is not None:
            raise ApiError(f"connection {conn['name']} failed: {failure}", EXIT_ERROR)
        if status["state"] == "up" and all(c["state"] == "up"
                                           for c in status.get("children", [])):
            return dict(status)
        if time.monotonic() >= deadline:
            waiting = [c["name"] for c in status.get("children", []) if c["state"] != "up"]
            raise ApiError(
                f"connection {conn['name']} not up after {timeout:g}s (state "
                f"{status['state']}{'; waiting for ' + ', '.join(waiting) if waiting else ''}"
                "); see `xfrmctl status` and `xfrmctl events`", EXIT_ERROR)
        time.sleep(POLL_INTERVAL)


def _failure(status: dict[str, Any]) -> str | None:
    """Why the connection or one of its children is down, if it failed."""
    if status["state"] in ("down", None) and status.get("reason"):
        return why(status)
    for child in status.get("children", []):
        if child["state"] == "down" and child.get("reason"):
            return f"child {child['name']}: {why(child)}"
    return None


@conn.command("down")
@click.argument("ref")
@json_flag
@pass_state
def conn_down(state: State, ref: str) -> None:
    """Terminate a connection's SAs."""
    _action(state, ref, "terminate")


@conn.command("rekey")
@click.argument("ref")
@click.option("--child", help="only this child's CHILD_SAs (its name)")
@json_flag
@pass_state
def conn_rekey(state: State, ref: str, child: str | None) -> None:
    """Rekey a connection's SAs, or only one child's CHILD_SAs."""
    if child is None:
        _action(state, ref, "rekey")
        return
    ids = resolve_child_sas(state, child, ref)
    results = [state.api.request("POST", f"/child-sas/{i}/rekey") for i in ids]
    emit_json(results) if state.json else click.echo(
        f"rekey: {ref}/{child} (CHILD_SA {', '.join(ids)})")
