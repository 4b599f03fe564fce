"""The fleet view: SAs as the gateways recorded them in the database, in the shape of
the live lists (run in a worker thread through `Database.run`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from xfrmctl.store import fleet
from xfrmctl.store import models as m

from .schemas.live import ChildSaPublic, IkeSaPublic, TrafficPublic


def _connection_names(session: Session, ids: set[int]) -> dict[int, str]:
    query = select(m.Connection.id, m.Connection.name).where(m.Connection.id.in_(ids))
    return {r.id: r.name for r in session.execute(query)}


def ike_sas(session: Session, gateway: str | None) -> list[IkeSaPublic]:
    rows = fleet.recorded_sas(session, m.IkeSaRecord, gateway)
    names = _connection_names(session, {r.connection_id for r, _, _ in rows
                                        if r.connection_id is not None})
    out = []
    for row, gw, stale in rows:
        out.append(IkeSaPublic(
            id=row.id, connection_id=row.connection_id,
            connection_name=names.get(row.connection_id) if row.connection_id else None,
            state=row.state, initiator=row.initiator, spi_i=row.spi_i, spi_r=row.spi_r,
            local_addr=row.local_addr, local_port=row.local_port,
            remote_addr=row.remote_addr, remote_port=row.remote_port,
            local_id=row.local_id, remote_id=row.remote_id, encryption=row.encryption,
            integrity=row.integrity, prf=row.prf, dh_group=row.dh_group,
            established_at=row.established_at, rekey_at=row.rekey_at,
            reauth_at=row.reauth_at, expire_at=row.expire_at,
            nat_local=row.local_port == 4500, nat_remote=row.remote_port == 4500,
            gateway=gw, stale=stale))
    return out


def child_sas(session: Session, gateway: str | None) -> list[ChildSaPublic]:
    rows = fleet.recorded_sas(session, m.ChildSaRecord, gateway)
    connections = {r.id: r.connection_id for r in session.execute(
        select(m.IkeSaRecord.id, m.IkeSaRecord.connection_id).where(
            m.IkeSaRecord.id.in_({r.ike_sa_id for r, _, _ in rows})))}
    out = []
    for row, gw, stale in rows:
        out.append(ChildSaPublic(
            id=row.id, ike_sa_id=row.ike_sa_id, connection_id=connections.get(row.ike_sa_id),
            child_id=row.child_id, name=row.name, state=row.state, mode=row.mode,
            protocol=row.protocol, spi_in=row.spi_in, spi_out=row.spi_out,
            local_ts=row.local_ts, remote_ts=row.remote_ts, encryption=row.encryption,
            integrity=row.integrity, dh_group=row.dh_group, esn=row.esn, encap=False,
            if_id=row.if_id, installed_at=row.installed_at, rekey_at=row.rekey_at,
            expire_at=row.expire_at, gateway=gw, stale=stale,
            traffic=TrafficPublic(bytes_in=row.bytes_in, bytes_out=row.bytes_out,
                                  packets_in=row.packets_in, packets_out=row.packets_out)))
    return out
