"""Live IKE_SAs and CHILD_SAs from the daemon, with filters and actions.

The fleet view: with `?gateway=NAME`, or from an API without a daemon, the lists come
from what the gateways recorded in the database (ids "<gateway>:<id>", unique in the
fleet; `stale` when that gateway's heartbeat stopped)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from xfrmctl.port import ActionRejected, Target, UnknownTarget
from xfrmctl.store import repo
from xfrmctl.store.models import EventKind

from .. import fleetview
from ..deps import (
    ControllerDep,
    GatewayQuery,
    IdQuery,
    OperateDep,
    PagingDep,
    Principal,
    ReadDep,
    Services,
    ServicesDep,
)
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


async def _ike_sas(services: Services, gateway: str | None) -> list[IkeSaPublic]:
    if gateway is None and services.controller is not None:
        return [IkeSaPublic.model_validate(sa).model_copy(update={"gateway": services.gateway})
                for sa in await services.controller.list_ike_sas()]
    return await services.db.run(fleetview.ike_sas, gateway)


async def _child_sas(services: Services, gateway: str | None) -> list[ChildSaPublic]:
    if gateway is None and services.controller is not None:
        return [ChildSaPublic.model_validate(sa).model_copy(
            update={"gateway": services.gateway})
                for sa in await services.controller.list_child_sas()]
    return await services.db.run(fleetview.child_sas, gateway)


@ike_router.get("", response_model=IkeSasPublic)
async def list_ike_sas(services: ServicesDep, _: ReadDep, paging: PagingDep,
                       connection_id: IdQuery = None, state: str | None = None,
                       gateway: GatewayQuery = None) -> IkeSasPublic:
    sas = [sa for sa in await _ike_sas(services, gateway)
           if (connection_id is None or sa.connection_id == connection_id)
           and (state is None or sa.state == state)]
    window = sas[paging.offset: paging.offset + paging.limit]
    return IkeSasPublic(data=window, count=len(sas))


@ike_router.get("/{sa_id}", response_model=IkeSaPublic)
async def read_ike_sa(services: ServicesDep, _: ReadDep, sa_id: SaId) -> IkeSaPublic:
    for sa in await _ike_sas(services, _gateway_of(services, sa_id)):
        if sa.id in (sa_id, _local_id(services, sa_id)):
            return sa
    raise UnknownTarget(f"IKE_SA {sa_id} not found")


@child_router.get("", response_model=ChildSasPublic)
async def list_child_sas(services: ServicesDep, _: ReadDep, paging: PagingDep,
                         connection_id: IdQuery = None, ike_sa_id: str | None = None,
                         state: str | None = None, gateway: GatewayQuery = None
                         ) -> ChildSasPublic:
    sas = [sa for sa in await _child_sas(services, gateway)
           if (connection_id is None or sa.connection_id == connection_id)
           and (ike_sa_id is None or sa.ike_sa_id == ike_sa_id)
           and (state is None or sa.state == state)]
    window = sas[paging.offset: paging.offset + paging.limit]
    return ChildSasPublic(data=window, count=len(sas))


@child_router.get("/{sa_id}", response_model=ChildSaPublic)
async def read_child_sa(services: ServicesDep, _: ReadDep, sa_id: SaId) -> ChildSaPublic:
    for sa in await _child_sas(services, _gateway_of(services, sa_id)):
        if sa.id in (sa_id, _local_id(services, sa_id)):
            return sa
    raise UnknownTarget(f"CHILD_SA {sa_id} not found")


def _gateway_of(services: Services, sa_id: str) -> str | None:
    """The gateway a fleet-wide id names, when it is not this daemon (read from the
    database); None: this daemon's own SA (read live)."""
    gateway, sep, _ = sa_id.partition(":")
    if not sep or (gateway == services.gateway and services.controller is not None):
        return None
    return gateway


def _local_id(services: Services, sa_id: str) -> str:
    """This daemon's id of an SA given by its fleet-wide id ("<this gateway>:<id>");
    an SA of another gateway is acted on through that gateway's API (409)."""
    gateway, sep, local = sa_id.partition(":")
    if not sep:
        return sa_id
    if gateway != services.gateway:
        raise ActionRejected(f"{sa_id} is held by gateway {gateway}: use that "
                             "gateway's API (xfrmctl --gateway is a view filter)")
    return local


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
        target = Target(kind, _local_id(services, sa_id))  # type: ignore[arg-type]
        await controller.terminate(target)
        await _audit(services, who, "terminate", target)
        return ActionResult(action="terminate", target=kind, id=sa_id)

    @router.post("/{sa_id}/rekey", response_model=ActionResult,
                 status_code=status.HTTP_202_ACCEPTED, name=f"rekey_{kind}")
    async def rekey(services: ServicesDep, who: OperateDep, controller: ControllerDep,
                    sa_id: SaId) -> ActionResult:
        target = Target(kind, _local_id(services, sa_id))  # type: ignore[arg-type]
        await controller.rekey(target)
        await _audit(services, who, "rekey", target)
        return ActionResult(action="rekey", target=kind, id=sa_id)


_add_actions(ike_router, "ike_sa")
_add_actions(child_router, "child_sa")
