"""Live state: `sa`, `status`, `policy`, `events`."""

from __future__ import annotations

import json
from typing import Any

import click

from . import State, json_flag, pass_state
from .client import EXIT_NOT_FOUND, ApiError
from .output import (
    ago,
    col,
    emit_fields,
    emit_json,
    emit_table,
    human_bytes,
    protocol,
    why,
)


def resolve_connection(state: State, ref: str) -> dict[str, Any]:
    """A connection by id or by name."""
    if ref.isdigit():
        conn: dict[str, Any] = state.api.get(f"/connections/{ref}")
        return conn
    for conn in state.api.all("/connections"):
        if conn["name"] == ref:
            return conn
    raise ApiError(f"no connection named {ref!r}", EXIT_NOT_FOUND)


def _remote(sa: dict[str, Any]) -> str:
    """addr[IKE identity], the EAP user it logged in as and the virtual IP, if any."""
    text = f"{sa['remote_addr']}[{sa['remote_id'] or ''}]"
    if sa.get("remote_eap_id"):
        text += f" eap:{sa['remote_eap_id']}"
    if sa.get("virtual_ip"):
        text += f" vip:{sa['virtual_ip']}"
    return text


def _state(sa: dict[str, Any]) -> str:
    """The state; "(stale)" when its gateway stopped heartbeating (the last known)."""
    return f"{sa['state']} (stale)" if sa.get("stale") else str(sa["state"])


IKE_COLUMNS = [
    col("IKE_SA", "id"), col("GATEWAY", "gateway"), col("CONN", "connection_name"),
    ("STATE", _state),
    ("LOCAL", lambda s: f"{s['local_addr']}[{s['local_id'] or ''}]"),
    ("REMOTE", _remote),
    ("SPIS", lambda s: f"{s['spi_i']}_i {s['spi_r']}_r"),
    ("PROPOSAL", lambda s: s.get("proposal") or _algorithms(s, "encryption", "integrity",
                                                             "dh_group")),
    ("PRF", lambda s: s.get("prf")),
    ("AGE", lambda s: ago(s["established_at"])), ("REKEY", lambda s: ago(s["rekey_at"])),
]
CHILD_COLUMNS = [
    col("CHILD_SA", "id"), col("IKE_SA", "ike_sa_id"), col("NAME", "name"),
    ("STATE", _state), col("MODE", "mode"), col("REQID", "reqid"),
    ("SPIS", lambda s: f"{s['spi_in']}_i {s['spi_out']}_o"),
    ("PROPOSAL", lambda s: s.get("proposal") or _algorithms(s, "encryption", "integrity",
                                                             "dh_group")),
    ("SELECTORS", lambda s: f"{','.join(s['local_ts'])} === {','.join(s['remote_ts'])}"),
    ("MTU/MSS", lambda s: f"{s['mtu']}/{s['mss']}" if s.get("mss") else s.get("mtu")),
    ("IN", lambda s: f"{human_bytes(s['traffic']['bytes_in'])}/"
                     f"{s['traffic']['packets_in']}p"),
    ("OUT", lambda s: f"{human_bytes(s['traffic']['bytes_out'])}/"
                      f"{s['traffic']['packets_out']}p"),
    ("LAST_USED", lambda s: ago(s["traffic"].get("last_used_at"))),
    ("AGE", lambda s: ago(s["installed_at"])), ("REKEY", lambda s: ago(s["rekey_at"])),
    ("EXPIRE", lambda s: ago(s["expire_at"])),
]


def _algorithms(sa: dict[str, Any], *keys: str) -> str:
    return "/".join(sa[k] for k in keys if sa.get(k))


@click.group()
def sa() -> None:
    """IKE_SAs and CHILD_SAs as negotiated."""


@sa.command("list")
@click.option("--conn", "conn_ref", help="only this connection (name or id)")
@json_flag
@pass_state
def sa_list(state: State, conn_ref: str | None) -> None:
    """IKE and CHILD SAs: algorithms, SPIs, selectors, age, rekey/expiry, traffic."""
    conn_id = resolve_connection(state, conn_ref)["id"] if conn_ref else None
    ike = state.api.all("/ike-sas", connection_id=conn_id, gateway=state.gateway)
    children = state.api.all("/child-sas", connection_id=conn_id, gateway=state.gateway)
    if state.json:
        emit_json({"ike_sas": ike, "child_sas": children})
        return
    emit_table(ike, IKE_COLUMNS)
    click.echo()
    emit_table(children, CHILD_COLUMNS)


@sa.command("show")
@click.argument("sa_id")
@json_flag
@pass_state
def sa_show(state: State, sa_id: str) -> None:
    """One IKE_SA with its CHILD_SAs (or one CHILD_SA)."""
    try:
        ike = state.api.get(f"/ike-sas/{sa_id}")
    except ApiError as exc:
        if exc.exit_code != EXIT_NOT_FOUND:
            raise
        child = state.api.get(f"/child-sas/{sa_id}")
        emit_json(child) if state.json else emit_fields(child)
        return
    children = state.api.all("/child-sas", ike_sa_id=sa_id)
    if state.json:
        emit_json({**ike, "child_sas": children})
        return
    emit_fields(ike)
    click.echo()
    emit_table(children, CHILD_COLUMNS)


@click.command()
@json_flag
@pass_state
def status(state: State) -> None:
    """Every configured connection with its actual state and, when down, why."""
    data = state.api.get("/status")
    if state.json:
        emit_json(data)
        return
    if state.gateway is not None:
        data["connections"] = [c for c in data["connections"]
                               if c.get("gateway") in (None, state.gateway)]
    if data.get("gateways"):
        click.echo(fleet_line(data))
    if not data["daemon"]:
        click.echo("daemon: not running (desired state only)")
    elif data.get("kernel") == "memory":
        click.echo("kernel: IN MEMORY (--kernel memory): nothing is installed, no traffic "
                   "is protected")
    rows: list[dict[str, Any]] = []
    for conn in data["connections"]:
        rows.append({**conn, "why": why(conn)})
        rows += [{**child, "id": "", "name": f"  {conn['name']}/{child['name']}",
                  "enabled": None, "ike_sa_ids": child["child_sa_ids"], "why": why(child)}
                 for child in conn.get("children", [])]
    emit_table(rows, [
        col("ID", "id"), col("CONNECTION", "name"), col("ENABLED", "enabled"),
        ("STATE", lambda c: c["state"] or "unknown"), col("REASON", "why"),
        ("SAS", lambda c: len(c["ike_sa_ids"])),
        ("MTU/MSS", lambda c: f"{c['mtu']}/{c['mss']}" if c.get("mss") else None),
        ("SINCE", lambda c: ago(c["since"]))])
    if data.get("unmatched"):
        click.echo("\nrecent peers that matched no connection:")
        emit_table(data["unmatched"], [
            ("WHEN", lambda f: ago(f["at"])), col("REMOTE", "remote"), col("LOCAL", "local"),
            col("REASON", "reason"), col("MESSAGE", "message")])


def fleet_line(data: dict[str, Any]) -> str:
    """One line on the fleet: gateways, how many reachable, which are not."""
    gateways = data["gateways"]
    down = [f"{g['name']} (last heard {ago(g['heartbeat_at'])})" for g in gateways
            if not g["reachable"]]
    here = f"this is {data['gateway']}; " if data.get("gateway") else ""
    line = (f"fleet: {here}{len(gateways)} gateways, {len(gateways) - len(down)} reachable, "
            f"{sum(g['ike_sas'] for g in gateways)} IKE_SAs")
    return line + (f"; UNREACHABLE (SAs stale): {', '.join(down)}" if down else "")


@click.group()
def policy() -> None:
    """IPsec policies installed by the daemon."""


@policy.command("list")
@click.option("--conn", "conn_ref", help="only this connection (name or id)")
@json_flag
@pass_state
def policy_list(state: State, conn_ref: str | None) -> None:
    conn_id = resolve_connection(state, conn_ref)["id"] if conn_ref else None
    rows = state.api.all("/policies", connection_id=conn_id)
    if state.json:
        emit_json(rows)
        return
    emit_table(rows, [col("DIR", "direction"), col("SRC", "src"), col("DST", "dst"),
                      ("PROTO", lambda p: protocol(p["proto"])), col("ACTION", "action"),
                      col("PRIO", "priority"),
                      col("IF_ID", "if_id"), col("CHILD_SA", "child_sa_id")])


EVENT_COLUMNS = [col("ID", "id"), col("TIME", "ts"), col("KIND", "kind"), col("TYPE", "type"),
                 col("ACTOR", "actor"), col("MESSAGE", "message")]


@click.command()
@click.option("--follow", "-f", is_flag=True, help="stream new events as they happen")
@click.option("--kind", type=click.Choice(["protocol", "audit"]))
@click.option("--type", "type_", help="only this event type, e.g. connections.update")
@click.option("--conn", "conn_ref", help="only this connection (name or id)")
@click.option("--limit", default=50, show_default=True, help="history: newest N events")
@click.option("--count", type=int, help="--follow: stop after N events")
@json_flag
@pass_state
def events(state: State, follow: bool, kind: str | None, type_: str | None,
           conn_ref: str | None, limit: int, count: int | None) -> None:
    """Event history (newest last), or a live stream with --follow."""
    conn_id = resolve_connection(state, conn_ref)["id"] if conn_ref else None
    filters = {"kind": kind, "type": type_, "connection_id": conn_id}
    if not follow:
        rows = list(reversed(state.api.get("/events", limit=limit, **filters)["data"]))
        emit_json(rows) if state.json else emit_table(rows, EVENT_COLUMNS)
        return
    for event in state.api.stream("/events/stream", max_events=count, **filters):
        if state.json:
            click.echo(json.dumps(event, sort_keys=True))
        else:
            click.echo(f"{event['ts']}  {event['kind']:<8}  {event['type']:<24}  "
                       f"{event['message']}")


def resolve_child_sas(state: State, ref: str, conn_ref: str | None = None) -> list[str]:
    """CHILD_SA ids by a CHILD_SA's id or by a child's name (every CHILD_SA it has)."""
    conn_id = resolve_connection(state, conn_ref)["id"] if conn_ref else None
    children = state.api.all("/child-sas", connection_id=conn_id)
    ids = [c["id"] for c in children if c["id"] == ref] or \
        [c["id"] for c in children if c["name"] == ref]
    if not ids:
        where = f" of connection {conn_ref}" if conn_ref else ""
        raise ApiError(f"no CHILD_SA {ref!r}{where} (a CHILD_SA id or a child's name; see "
                       "`xfrmctl sa list`)", EXIT_NOT_FOUND)
    return ids


def _sa_action(state: State, action: str, sa_id: str | None, child: str | None,
               ike: str | None, conn_ref: str | None) -> None:
    if sum(x is not None for x in (sa_id, child, ike)) != 1:
        raise click.UsageError("name one SA: SA_ID, --child ID|NAME or --ike ID")
    targets: list[tuple[str, str]]
    if child is not None:
        targets = [("child-sas", i) for i in resolve_child_sas(state, child, conn_ref)]
    elif ike is not None:
        targets = [("ike-sas", ike)]
    else:
        assert sa_id is not None
        try:
            state.api.get(f"/ike-sas/{sa_id}")
            targets = [("ike-sas", sa_id)]
        except ApiError as exc:
            if exc.exit_code != EXIT_NOT_FOUND:
                raise
            targets = [("child-sas", sa_id)]
    results = [state.api.request("POST", f"/{kind}/{ident}/{action}")
               for kind, ident in targets]
    if state.json:
        emit_json(results)
    else:
        for kind, ident in targets:
            click.echo(f"{action}: {'CHILD_SA' if kind == 'child-sas' else 'IKE_SA'} {ident}")


def _sa_action_command(action: str, doc: str) -> click.Command:
    @sa.command(action, help=doc)
    @click.argument("sa_id", required=False)
    @click.option("--child", help="a CHILD_SA's id, or a child's name (all its CHILD_SAs)")
    @click.option("--ike", help="an IKE_SA's id")
    @click.option("--conn", "conn_ref", help="with --child NAME: only this connection")
    @json_flag
    @pass_state
    def command(state: State, sa_id: str | None, child: str | None, ike: str | None,
                conn_ref: str | None) -> None:
        _sa_action(state, action, sa_id, child, ike, conn_ref)

    return command


_sa_action_command("rekey", "Rekey an IKE_SA or CHILD_SA (make-before-break).")
_sa_action_command("terminate", "Delete an IKE_SA (with its CHILD_SAs) or one CHILD_SA.")
