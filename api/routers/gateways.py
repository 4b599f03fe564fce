"""The gateways of the fleet sharing this database: registered by their daemons, with
reachability (heartbeats) and what each runs; decommissioning one removes its recorded
SAs (refused while connections are assigned to it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from xfrmctl.store import fleet, repo
from xfrmctl.store.models import EventKind

from ..deps import AdminDep, PagingDep, ReadDep, ServicesDep
from ..schemas.live import GatewayPublic, GatewaysPublic

router = APIRouter(prefix="/gateways", tags=["gateways"])
GatewayName = Annotated[str, Path(min_length=1, max_length=64,
                                  pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


@router.get("", response_model=GatewaysPublic)
async def list_gateways(services: ServicesDep, _: ReadDep, paging: PagingDep
                        ) -> GatewaysPublic:
    rows = await services.db.run(fleet.list_gateways)
    window = rows[paging.offset: paging.offset + paging.limit]
    return GatewaysPublic(data=[GatewayPublic.model_validate(g) for g in window],
                          count=len(rows))


@router.get("/{name}", response_model=GatewayPublic)
async def read_gateway(services: ServicesDep, _: ReadDep, name: GatewayName) -> GatewayPublic:
    for row in await services.db.run(fleet.list_gateways):
        if row.name == name:
            return GatewayPublic.model_validate(row)
    raise repo.NotFound("gateway", name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_gateway(services: ServicesDep, who: AdminDep, name: GatewayName) -> None:
    """Decommission: its row and recorded SAs go (a daemon of that name registers anew)."""
    await services.db.run(fleet.delete_gateway, name)
    await services.db.run(repo.record_event, EventKind.AUDIT, "gateways.delete",
                          actor=who.actor, resource="gateways", resource_id=name,
                          message=f"{who.actor} deleted gateway {name}")
