"""Live IKE_SAs and CHILD_SAs from the daemon, with filters and actions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from xfrmctl.port import Target, UnknownTarget
from xfrmctl.store import repo
from xfrmctl.store.models import EventKind

from ..deps import ControllerDep, IdQuery, OperateDep, PagingDep, Principal, ReadDep, ServicesDep
from ..schemas.live import (
    ActionResult,
    ChildSaPublic,
    ChildSasPublic,
    IkeSaPublic,
    IkeSasPublic,
)

ike_router = APIRouter(prefix="/ike-sas", tags=["ike-sas"])
child_router = APIRouter(prefix="/child-sas", tags=["child-sas"])
SaId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


@ike_router.get("", response_model=IkeSasPublic)
async def list_ike_sas(controller: ControllerDep, _: ReadDep, paging: PagingDep,
                       connection_id: IdQuery = None, state: str | None = None) -> IkeSasPublic:
    sas = [sa for sa in await controller.list_ike_sas()
           if (connection_id is None or sa.connection_id == connection_id)
           and (state is None or sa.state == state)]
    window = sas[paging.offset: paging.offset + paging.limit]
    return IkeSasPublic(data=[IkeSaPublic.model_validate(sa) for sa in window], count=len(sas))


@ike_router.get("/{sa_id}", response_model=IkeSaPublic)
async def read_ike_sa(controller: ControllerDep, _: ReadDep, sa_id: SaId) -> IkeSaPublic:
    for sa in await controller.list_ike_sas():
        if sa.id == sa_id:
            return IkeSaPublic.model_validate(sa)
    raise UnknownTarget(f"IKE_SA {sa_id} not found")


@child_router.get("", response_model=ChildSasPublic)
async def list_child_sas(controller: ControllerDep, _: ReadDep, paging: PagingDep,
                         connection_id: IdQuery = None, ike_sa_id: str | None = None,
                         state: str | None = None) -> ChildSasPublic:
    sas = [sa for sa in await controller.list_child_sas()
           if (connection_id is None or sa.connection_id == connection_id)
           and (ike_sa_id is None or sa.ike_sa_id == ike_sa_id)
           and (state is None or sa.state == state)]
    window = sas[paging.offset: paging.offset + paging.limit]
    return ChildSasPublic(data=[ChildSaPublic.model_validate(sa) for sa in window],
                          count=len(sas))


@child_router.get("/{sa_id}", response_model=ChildSaPublic)
async def read_child_sa(controller: ControllerDep, _: ReadDep, sa_id: SaId) -> ChildSaPublic:
    for sa in await controller.list_child_sas():
        if sa.id == sa_id:
            return ChildSaPublic.model_validate(sa)
    raise UnknownTarget(f"CHILD_SA {sa_id} not found")


async def _audit(services: ServicesDep, who: Principal, action: str, target: Target) -> None:
    await services.db.run(repo.record_event, EventKind.AUDIT, f"{target.kind}.{action}",
                          actor=who.actor, resource=target.kind, resource_id=target.id,
                          message=f"{who.actor} requested {action} of {target.kind} "
                                  f"{target.id}")


def _add_actions(router: APIRouter, kind: str) -> None:
    @router.post("/{sa_id}/terminate", response_model=ActionResult,
                 status_code=status.HTTP_202_ACCEPTED, name=f"terminate_{kind}")
    async def terminate(services: ServicesDep, who: OperateDep, controller: ControllerDep,
                        sa_id: SaId) -> ActionResult:
        target = Target(kind, sa_id)  # type: ignore[arg-type]
        await controller.terminate(target)
        await _audit(services, who, "terminate", target)
        return ActionResult(action="terminate", target=kind, id=sa_id)

    @router.post("/{sa_id}/rekey", response_model=ActionResult,
                 status_code=status.HTTP_202_ACCEPTED, name=f"rekey_{kind}")
    async def rekey(services: ServicesDep, who: OperateDep, controller: ControllerDep,
                    sa_id: SaId) -> ActionResult:
        target = Target(kind, sa_id)  # type: ignore[arg-type]
        await controller.rekey(target)
        await _audit(services, who, "rekey", target)
        return ActionResult(action="rekey", target=kind, id=sa_id)


_add_actions(ike_router, "ike_sa")
_add_actions(child_router, "child_sa")
