"""Connections (IKE_SA configurations) and the actions on them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from xfrmctl.daemon.ports import Target
from xfrmctl.store import pki, repo
from xfrmctl.store.models import (
    AuthMethod,
    Certificate,
    Connection,
    EventKind,
    Secret,
    SecretKind,
    StartAction,
)
from xfrmctl.store.secrets import SecretBox

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


def connection_check(box: SecretBox) -> crud.Check:
    """Refuse a connection the daemon could not load, naming the field: the secret must
    fit the auth method (a PSK for psk; for pubkey a certificate, its private key and a
    CA, the key matching the certificate), and start/trap needs remote addresses."""

    def check(session: Session, values: dict[str, Any]) -> None:
        if values.get("auth") == AuthMethod.PUBKEY:
            _check_pubkey(session, box, values)
        else:
            _secret(session, values.get("secret_id"), SecretKind.PSK, "psk")
        if values.get("start_action", StartAction.NONE) != StartAction.NONE \
                and not values.get("remote_addrs"):
            raise repo.InvalidField("remote_addrs", f"start_action {values['start_action']} "
                                    "needs the peer's address in remote_addrs")
    return check


def _secret(session: Session, secret_id: int | None, kind: SecretKind, auth: str,
            field: str = "secret_id") -> Secret:
    if secret_id is None:
        raise repo.InvalidField(field, f"auth {auth} needs a {kind} secret: create one "
                                "(POST /secrets) and give its id")
    secret = session.get(Secret, secret_id)
    if secret is None:
        raise repo.InvalidField(field, f"secrets {secret_id} does not exist")
    if secret.kind != kind:
        raise repo.InvalidField(field, f"auth {auth} needs a {kind} secret, not {secret.kind}")
    return secret


def _check_pubkey(session: Session, box: SecretBox, values: dict[str, Any]) -> None:
    cert_id = values.get("certificate_id")
    cert = session.get(Certificate, cert_id) if cert_id is not None else None
    if cert is None:
        raise repo.InvalidField("certificate_id", "auth pubkey needs the local certificate "
                                "(POST /certificates) in certificate_id")
    key_id = values.get("secret_id") or cert.key_secret_id
    secret = _secret(session, key_id, SecretKind.PRIVATE_KEY, "pubkey")
    key = pki.load_private_key(box.decrypt(secret.name, secret.ciphertext))
    if not pki.key_matches(key, cert.pem):
        raise repo.InvalidField("secret_id", f"private key {secret.name!r} does not match "
                                f"certificate {cert.name!r}")
    if (values.get("ca_id") or cert.ca_id) is None:
        raise repo.InvalidField("ca_id", "auth pubkey needs a CA to verify the peer: set "
                                "ca_id (POST /cas)")


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
                             connection_check(services.box))


@router.get("/{connection_id}", response_model=ConnectionPublic)
async def read_connection(services: ServicesDep, _: ReadDep, connection_id: IdPath) -> Connection:
    return await crud.get(services, Connection, connection_id)


@router.patch("/{connection_id}", response_model=ConnectionPublic)
async def update_connection(services: ServicesDep, who: AdminDep, connection_id: IdPath,
                            body: ConnectionUpdate) -> Connection:
    return await crud.update(services, who, Connection, "connection", connection_id,
                             body.model_dump(exclude_unset=True),
                             connection_check(services.box))


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
