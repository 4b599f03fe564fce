"""Desired vs actual: every configured connection with its state and, when down, why."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from xfrmctl.port import ConnectionState, ConnectionStatus, DownReason
from xfrmctl.store import fleet
from xfrmctl.store.models import Connection

from ..deps import ReadDep, Services, ServicesDep
from ..schemas.live import (
    ChildStatusPublic,
    ConnectionStatusPublic,
    CountersPublic,
    FailurePublic,
    GatewayPublic,
    StatusPublic,
)

router = APIRouter(prefix="/status", tags=["status"])


def _connections(session: Session) -> list[tuple[int, str, bool]]:
    rows = session.execute(select(Connection.id, Connection.name, Connection.enabled)
                           .order_by(Connection.id))
    return [(r.id, r.name, r.enabled) for r in rows]


@router.get("", response_model=StatusPublic)
async def read_status(services: ServicesDep, _: ReadDep) -> StatusPublic:
    """Desired vs actual of this daemon, and every gateway of the fleet."""
    status = await _status(services)
    gateways = await services.db.run(fleet.list_gateways)
    names = {g.id: g.name for g in gateways}
    assigned = dict(await services.db.run(_assignments))
    connections = [_elsewhere(c, names[assigned[c.id]], services.gateway)
                   if assigned.get(c.id) in names else c for c in status.connections]
    return status.model_copy(update={
        "gateway": services.gateway, "connections": connections,
        "gateways": [GatewayPublic.model_validate(g) for g in gateways]})


def _assignments(session: Session) -> list[tuple[int, int]]:
    rows = session.execute(select(Connection.id, Connection.gateway_id)
                           .where(Connection.gateway_id.is_not(None)))
    return [(r.id, r.gateway_id) for r in rows if r.gateway_id is not None]


def _elsewhere(status: ConnectionStatusPublic, gateway: str, here: str | None
               ) -> ConnectionStatusPublic:
    """A connection assigned to a gateway: this daemon's view if it is this gateway,
    else where it runs (its SAs: GET /ike-sas?gateway=...)."""
    if gateway == here:
        return status.model_copy(update={"gateway": gateway})
    return status.model_copy(update={
        "gateway": gateway, "state": None, "reason": None, "children": [],
        "detail": {"message": f"runs on gateway {gateway}"}})


async def _status(services: Services) -> StatusPublic:
    configured = await services.db.run(_connections)
    if services.controller is None:
        return StatusPublic(
            daemon=False, started_at=None, version="", counters=None,
            connections=[ConnectionStatusPublic(
                id=cid, name=name, enabled=enabled, state=None,
                reason=DownReason.DAEMON_NOT_RUNNING,
                detail={}, ike_sa_ids=[], since=None) for cid, name, enabled in configured])
    daemon = await services.controller.status()
    actual = {c.connection_id: c for c in daemon.connections}
    return StatusPublic(
        daemon=True, started_at=daemon.started_at, version=daemon.version,
        kernel=daemon.kernel,
        counters=CountersPublic.model_validate(daemon.counters),
        connections=[_merge(cid, name, enabled, actual.get(cid), daemon.not_loaded.get(name))
                     for cid, name, enabled in configured],
        unmatched=[FailurePublic.model_validate(f) for f in daemon.unmatched])


def _merge(cid: int, name: str, enabled: bool, actual: ConnectionStatus | None,
           why_not_loaded: str | None) -> ConnectionStatusPublic:
    if actual is None:
        reason = DownReason.DISABLED if not enabled else DownReason.NOT_LOADED
        detail = {"message": why_not_loaded or "the daemon has not loaded it (yet)"} \
            if enabled else {}
        return ConnectionStatusPublic(id=cid, name=name, enabled=enabled,
                                      state=ConnectionState.DOWN if enabled else None,
                                      reason=reason, detail=detail, ike_sa_ids=[], since=None)
    return ConnectionStatusPublic(
        id=cid, name=name, enabled=enabled, state=actual.state, reason=actual.reason,
        detail=dict(actual.detail), ike_sa_ids=list(actual.ike_sa_ids), since=actual.since,
        children=[ChildStatusPublic.model_validate(c) for c in actual.children])
