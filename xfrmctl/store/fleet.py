"""A fleet of gateways on one database: registration, heartbeats, reachability, and the
recorded SAs of every gateway (the fleet view).

Each daemon registers itself by name at start (a restart takes its row back) and
heartbeats every `heartbeat_interval` seconds. A gateway whose last heartbeat is older
than UNREACHABLE_AFTER intervals is unreachable: its recorded SAs stay, shown as stale,
until it comes back and replaces them, or an operator removes the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session

from . import models as m
from .repo import Conflict, NotFound, _flush

UNREACHABLE_AFTER = 3  # missed heartbeats
# PostgreSQL NOTIFY channel: a configuration change committed by any process.
CHANGES_CHANNEL = "xfrmctl_config"


@dataclass(frozen=True)
class GatewayState:
    """A gateway as the fleet view shows it."""

    id: int
    name: str
    addresses: list[str]
    version: str
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_interval: int
    reachable: bool
    ike_sas: int
    child_sas: int
    connections: int  # assigned to it (unassigned ones run on every gateway)


def is_reachable(gateway: m.Gateway, now: datetime) -> bool:
    limit = timedelta(seconds=gateway.heartbeat_interval * UNREACHABLE_AFTER)
    return now - gateway.heartbeat_at <= limit


def register_gateway(session: Session, name: str, addresses: Sequence[str], version: str,
                     *, interval: int) -> m.Gateway:
    """This daemon's row: created, or taken back by a restart (same name)."""
    now = m.utcnow()
    row = session.scalar(select(m.Gateway).where(m.Gateway.name == name))
    values = {"addresses": list(addresses), "version": version,
              "heartbeat_interval": interval, "started_at": now, "heartbeat_at": now}
    if row is None:
        row = m.Gateway(name=name, created_at=now, **values)
        session.add(row)
        _flush(session, f"gateway {name} is being registered by another process")
    else:
        for key, value in values.items():
            setattr(row, key, value)
    return row


def heartbeat(session: Session, gateway_id: int, addresses: Sequence[str] | None = None
              ) -> None:
    values: dict[str, Any] = {"heartbeat_at": m.utcnow()}
    if addresses is not None:
        values["addresses"] = list(addresses)
    if session.execute(update(m.Gateway).where(m.Gateway.id == gateway_id)
                       .values(**values)).rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound("gateways", gateway_id)


def gateway_id(session: Session, name: str) -> int:
    ident = session.scalar(select(m.Gateway.id).where(m.Gateway.name == name))
    if ident is None:
        raise NotFound("gateways", name)
    return ident


def list_gateways(session: Session, now: datetime | None = None) -> list[GatewayState]:
    """Every gateway with its reachability and how much it runs (three grouped counts)."""
    now = now or m.utcnow()

    def counts(column: Any) -> dict[int, int]:
        return {r[0]: r[1] for r in session.execute(
            select(column, func.count()).where(column.is_not(None)).group_by(column))}

    ikes, children = counts(m.IkeSaRecord.gateway_id), counts(m.ChildSaRecord.gateway_id)
    conns = counts(m.Connection.gateway_id)
    return [GatewayState(g.id, g.name, g.addresses, g.version, g.started_at, g.heartbeat_at,
                         g.heartbeat_interval, is_reachable(g, now), ikes.get(g.id, 0),
                         children.get(g.id, 0), conns.get(g.id, 0))
            for g in session.scalars(select(m.Gateway).order_by(m.Gateway.name))]


def delete_gateway(session: Session, name: str) -> None:
    """Decommission a gateway: its recorded SAs go with it; refused (Conflict) while
    connections are assigned to it."""
    row = session.get(m.Gateway, gateway_id(session, name))
    session.delete(row)
    _flush(session, f"gateway {name} still has connections assigned to it")


def recorded_sas(session: Session, model: Any, gateway: str | None = None
                 ) -> list[tuple[Any, str | None, bool]]:
    """Recorded IKE_SAs or CHILD_SAs (of one gateway, by name), each with its gateway's
    name and whether it is stale (its gateway unreachable)."""
    now = m.utcnow()
    gateways = {g.id: g for g in session.scalars(select(m.Gateway))}
    query = select(model).order_by(model.gateway_id, model.id)
    if gateway is not None:
        query = query.where(model.gateway_id == gateway_id(session, gateway))
    out = []
    for row in session.scalars(query):
        gw = gateways.get(row.gateway_id) if row.gateway_id is not None else None
        out.append((row, gw.name if gw else None, gw is not None and not is_reachable(gw, now)))
    return out


def runs_here(gateway: int | None) -> Any:
    """Connections a gateway runs: those assigned to it and the unassigned ones."""
    return or_(m.Connection.gateway_id.is_(None), m.Connection.gateway_id == gateway)


def notify_changes(session: Session, events: Sequence[dict[str, Any]]) -> None:
    """On PostgreSQL, announce committed configuration changes to every daemon (NOTIFY is
    delivered at commit, and not at all on rollback)."""
    if session.get_bind().dialect.name != "postgresql" or not events:
        return
    changed = sorted({f"{e.get('resource')}:{e.get('resource_id')}" for e in events})
    payload = json.dumps(changed)[:7900]  # NOTIFY payloads are limited to 8000 bytes
    session.execute(text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": CHANGES_CHANNEL, "payload": payload})


__all__ = ["CHANGES_CHANNEL", "Conflict", "GatewayState", "delete_gateway", "gateway_id",
           "heartbeat", "is_reachable", "list_gateways", "notify_changes", "recorded_sas",
           "register_gateway", "runs_here"]
