"""Connections (IKE_SA configurations) and the actions on them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from xfrmctl.daemon.ports import Target
from xfrmctl.store import repo
from xfrmctl.store.models import AuthMethod, Connection, EventKind, Secret, SecretKind

from .. import crud
from ..deps import (
    AdminDep,
    ControllerDep,
    IdPath,
    IdQuery,
    OperateDep,
    PagingDep,
    Principal,
    ReadDep,
    Services,
    ServicesDep,
)
from ..schemas.config import (
    ConnectionCreate,
    ConnectionPublic,
    ConnectionsPublic,
    ConnectionUpdate,
)
from ..schemas.live import ActionResult

router = APIRouter(prefix="/connections", tags=["connections"])


def check_connection(session: Session, values: dict[str, Any]) -> None:
    """The secret must fit the auth method: a PSK for psk, a private key for pubkey."""
    secret_id = values.get("secret_id")
    if secret_id is None:
        return
    secret = session.get(Secret, secret_id)
    if secret is None:
        raise repo.InvalidField("secret_id", f"secrets {secret_id} does not exist")
    wanted = SecretKind.PSK if values.get("auth") == AuthMethod.PSK else SecretKind.PRIVATE_KEY
    if secret.kind != wanted:
        raise repo.InvalidField(
            "secret_id", f"auth {values.get('auth')} needs a {wanted} secret, not {secret.kind}")


@router.get("", response_model=ConnectionsPublic)
async def list_connections(services: ServicesDep, _: ReadDep, paging: PagingDep,
                           peer_id: IdQuery = None) -> ConnectionsPublic:
    rows, count = await crud.page(services, Connection, paging, peer_id=peer_id)
    return ConnectionsPublic(data=[ConnectionPublic.model_validate(r) for r in rows],
                             count=count)


@router.post("", response_model=ConnectionPublic, status_code=status.HTTP_201_CREATED)
async def create_connection(services: ServicesDep, who: AdminDep,
                            body: ConnectionCreate) -> Connection:
    return await crud.create(services, who, Connection, "connection", body.model_dump(),
                             check_connection)


@router.get("/{connection_id}", response_model=ConnectionPublic)
async def read_connection(services: ServicesDep, _: ReadDep, connection_id: IdPath) -> Connection:
    return await crud.get(services, Connection, connection_id)


@router.patch("/{connection_id}", response_model=ConnectionPublic)
async def update_connection(services: ServicesDep, who: AdminDep, connection_id: IdPath,
                            body: ConnectionUpdate) -> Connection:
    return await crud.update(services, who, Connection, "connection", connection_id,
                             body.model_dump(exclude_unset=True), check_connection)


@router.delete("/{connection_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_connection(services: ServicesDep, who: AdminDep, connection_id: IdPath) -> None:
    """Delete the connection and its children; the daemon tears its SAs down."""
    await crud.delete(services, who, Connection, "connection", connection_id)


async def _act(services: Services, who: Principal, action: str,
               connection_id: int) -> ActionResult:
    await crud.get(services, Connection, connection_id)  # 404 if not configured
    await services.db.run(repo.record_event, EventKind.AUDIT, f"connection.{action}",
                          actor=who.actor, resource="connections",
                          resource_id=str(connection_id), connection_id=connection_id,
                          message=f"{who.actor} requested {action} of connection "
                                  f"{connection_id}")
    return ActionResult(action=action, target="connection", id=str(connection_id))


@router.post("/{connection_id}/initiate", response_model=ActionResult,
             status_code=status.HTTP_202_ACCEPTED)
async def initiate_connection(services: ServicesDep, who: OperateDep, controller: ControllerDep,
                              connection_id: IdPath, child_id: IdQuery = None
                              ) -> ActionResult:
    result = await _act(services, who, "initiate", connection_id)
    await controller.initiate(connection_id, child_id)
    return result


@router.post("/{connection_id}/terminate", response_model=ActionResult,
             status_code=status.HTTP_202_ACCEPTED)
async def terminate_connection(services: ServicesDep, who: OperateDep,
                               controller: ControllerDep, connection_id: IdPath) -> ActionResult:
    result = await _act(services, who, "terminate", connection_id)
    await controller.terminate(Target("connection", str(connection_id)))
    return result


@router.post("/{connection_id}/rekey", response_model=ActionResult,
             status_code=status.HTTP_202_ACCEPTED)
async def rekey_connection(services: ServicesDep, who: OperateDep, controller: ControllerDep,
                           connection_id: IdPath) -> ActionResult:
    result = await _act(services, who, "rekey", connection_id)
    await controller.rekey(Target("connection", str(connection_id)))
    return result
