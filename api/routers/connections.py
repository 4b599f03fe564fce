"""Connections (IKE_SA configurations) and the actions on them.

Every path takes the connection's id or its name. A connection applied from a
configuration file (`managed_by` set) is shown and acted on (initiate, terminate, rekey)
like any other, but writes to it (and to its children) are refused with 409 saying to
edit the file, until it is taken over (`POST /connections/{name}/takeover`): then it is
the database's, and the file no longer changes or removes it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from xfrmctl.port import Target
from xfrmctl.store import fleet, pki, repo
from xfrmctl.store.models import (
    AuthMethod,
    Certificate,
    Connection,
    EapMethod,
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
    GatewayQuery,
    IdQuery,
    OperateDep,
    Paging,
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
ConnectionRef = Annotated[str, Path(min_length=1, max_length=64,
                                    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                    description="the connection's id or name")]


def find_connection(session: Session, ref: str) -> Connection:
    """By id (all digits) or else by name; NotFound names what was asked for."""
    if ref.isascii() and ref.isdigit():
        row = session.get(Connection, int(ref))
        if row is not None:
            return row
    row = session.scalar(select(Connection).where(Connection.name == ref))
    if row is None:
        raise repo.NotFound("connection", ref)
    return row


def refuse_if_file_managed(row: Connection) -> None:
    """409 for a write to a connection its configuration file owns."""
    if row.managed_by:
        source = row.managed_by.removeprefix("file:")
        raise repo.Conflict(
            f"connection {row.name} is managed by the configuration file {source}: edit "
            "the file and reload the daemon (SIGHUP or `xfrmctl db import`), or take it "
            f"over first (`xfrmctl conn takeover {row.name}`, POST /connections/"
            f"{row.name}/takeover); the file then no longer manages it")


def writable_connection(session: Session, ref: str) -> Connection:
    row = find_connection(session, ref)
    refuse_if_file_managed(row)
    return row


def connection_check(box: SecretBox) -> crud.Check:
    """Refuse a connection the daemon could not load, naming the field: the secret must
    fit the auth method (a PSK for psk; for pubkey a certificate, its private key and a
    CA, the key matching the certificate), and start/trap needs remote addresses."""

    def check(session: Session, values: dict[str, Any]) -> None:
        if values.get("managed_by"):  # a file's connection is not changed here (409)
            refuse_if_file_managed(find_connection(session, str(values["id"])))
        if values.get("pool") == "dynamic":
            raise repo.InvalidField("pool", "pool is a prefix (e.g. 10.3.0.0/24), not dynamic")
        if values.get("local_auth") or values.get("remote_auth"):
            _check_eap(session, box, values)
        elif values.get("auth") == AuthMethod.PUBKEY:
            _check_pubkey(session, box, values)
        else:
            _secret(session, values.get("secret_id"), SecretKind.PSK, "psk")
        _check_ppk(session, values)
        if values.get("start_action", StartAction.NONE) != StartAction.NONE \
                and not values.get("remote_addrs"):
            raise repo.InvalidField("remote_addrs", f"start_action {values['start_action']} "
                                    "needs the peer's address in remote_addrs")
    return check


def _check_ppk(session: Session, values: dict[str, Any]) -> None:
    """A PPK (RFC 8784) is a ppk_id with a secret of kind ppk; required needs one."""
    has_id, has_secret = values.get("ppk_id") is not None, values.get("ppk_secret_id") is not None
    if has_id != has_secret:
        raise repo.InvalidField("ppk_secret_id" if has_id else "ppk_id",
                                "ppk_id and ppk_secret_id go together: set both or neither")
    if has_secret:
        _secret(session, values["ppk_secret_id"], SecretKind.PPK, "with a PPK", "ppk_secret_id")
    elif values.get("ppk_required"):
        raise repo.InvalidField("ppk_required", "ppk_required needs ppk_id and ppk_secret_id")


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


def _check_eap(session: Session, box: SecretBox, values: dict[str, Any]) -> None:
    """EAP (RFC 7296 2.16): the gateway always proves itself with its certificate. As
    the gateway (remote_auth) we need certificate and key (eap-tls: and the CA of the
    clients' certificates); as the client (local_auth) a CA for the gateway and our
    password (a secret of kind eap), or with eap-tls our certificate and key."""
    if values.get("local_auth") and values.get("remote_auth"):
        raise repo.InvalidField("local_auth", "EAP on both sides: set local_auth (we are "
                                "the client) or remote_auth (we are the gateway), not both")
    if values.get("auth") != AuthMethod.PUBKEY:
        raise repo.InvalidField("auth", "with EAP the gateway proves itself with a "
                                "certificate: set auth to pubkey")
    tls = EapMethod.TLS in (values.get("local_auth"), values.get("remote_auth"))
    if values.get("remote_auth") or tls:
        _check_pubkey(session, box, values, need_ca=tls)
        return
    if values.get("ca_id") is None:
        raise repo.InvalidField("ca_id", "an EAP client needs the CA of the gateway's "
                                "certificate in ca_id")
    _secret(session, values.get("eap_secret_id"), SecretKind.EAP,
            str(values["local_auth"]), field="eap_secret_id")


def _check_pubkey(session: Session, box: SecretBox, values: dict[str, Any],
                  need_ca: bool = True) -> None:
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
    if need_ca and (values.get("ca_id") or cert.ca_id) is None:
        raise repo.InvalidField("ca_id", "auth pubkey needs a CA to verify the peer: set "
                                "ca_id (POST /cas)")


def _page(session: Session, paging: Paging, peer_id: int | None, gateway: str | None
          ) -> tuple[list[Connection], int]:
    where = [] if gateway is None else [fleet.runs_here(fleet.gateway_id(session, gateway))]
    return repo.list_page(session, Connection, offset=paging.offset, limit=paging.limit,
                          filters={"peer_id": peer_id}, where=where)


@router.get("", response_model=ConnectionsPublic)
async def list_connections(services: ServicesDep, _: ReadDep, paging: PagingDep,
                           peer_id: IdQuery = None, gateway: GatewayQuery = None
                           ) -> ConnectionsPublic:
    """Every connection; with `gateway`, those that gateway runs (assigned to it, or
    to no gateway)."""
    rows, count = await services.db.run(_page, paging, peer_id, gateway)
    return ConnectionsPublic(data=[ConnectionPublic.model_validate(r) for r in rows],
                             count=count)


@router.post("", response_model=ConnectionPublic, status_code=status.HTTP_201_CREATED)
async def create_connection(services: ServicesDep, who: AdminDep,
                            body: ConnectionCreate) -> Connection:
    return await crud.create(services, who, Connection, "connection", body.model_dump(),
                             connection_check(services.box))


IfMatch = Annotated[str | None, Header(
    alias="If-Match", max_length=32, description="the version (ETag) read: the write is "
    "refused with 409 if the connection changed since (another API, another operator)")]


def expected_version(if_match: str | None) -> int | None:
    """The version an If-Match header names ("3", W/"3" or 3); 422 if it names none."""
    if if_match is None or if_match.strip() == "*":
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isascii() or not text.isdigit():
        raise repo.InvalidField("If-Match", "If-Match is the connection's version (its "
                                'ETag, e.g. "3")')
    return int(text)


@router.get("/{connection_id}", response_model=ConnectionPublic)
async def read_connection(services: ServicesDep, _: ReadDep, connection_id: ConnectionRef,
                          response: Response) -> Connection:
    row = await services.db.run(find_connection, connection_id)
    response.headers["ETag"] = f'"{row.version}"'
    return row


@router.patch("/{connection_id}", response_model=ConnectionPublic)
async def update_connection(services: ServicesDep, who: AdminDep, connection_id: ConnectionRef,
                            body: ConnectionUpdate, response: Response,
                            if_match: IfMatch = None) -> Connection:
    version = expected_version(if_match)
    row = await services.db.run(writable_connection, connection_id)
    updated = await crud.update(services, who, Connection, "connection", row.id,
                                body.model_dump(exclude_unset=True),
                                connection_check(services.box), version)
    response.headers["ETag"] = f'"{updated.version}"'
    return updated


@router.delete("/{connection_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_connection(services: ServicesDep, who: AdminDep,
                            connection_id: ConnectionRef, if_match: IfMatch = None) -> None:
    """Delete the connection and its children; the daemon tears its SAs down."""
    version = expected_version(if_match)
    row = await services.db.run(writable_connection, connection_id)
    await crud.delete(services, who, Connection, "connection", row.id, version)


@router.post("/{connection_id}/takeover", response_model=ConnectionPublic)
async def take_over_connection(services: ServicesDep, who: AdminDep,
                               connection_id: ConnectionRef) -> Connection:
    """Manage a file's connection through the API from now on: its file no longer
    changes or removes it (nothing changes for the running SAs)."""
    row = await services.db.run(find_connection, connection_id)
    if row.managed_by is None:
        return row
    return await services.db.run(repo.take_over, row.id, actor=who.actor)


async def _act(services: Services, who: Principal, action: str, ref: str) -> tuple[int,
                                                                                   ActionResult]:
    row = await services.db.run(find_connection, ref)  # 404 if not configured
    await services.db.run(repo.record_event, EventKind.AUDIT, f"connection.{action}",
                          actor=who.actor, resource="connections",
                          resource_id=str(row.id), connection_id=row.id,
                          message=f"{who.actor} requested {action} of connection "
                                  f"{row.name}")
    return row.id, ActionResult(action=action, target="connection", id=str(row.id))


@router.post("/{connection_id}/initiate", response_model=ActionResult,
             status_code=status.HTTP_202_ACCEPTED)
async def initiate_connection(services: ServicesDep, who: OperateDep, controller: ControllerDep,
                              connection_id: ConnectionRef, child_id: IdQuery = None
                              ) -> ActionResult:
    ident, result = await _act(services, who, "initiate", connection_id)
    await controller.initiate(ident, child_id)
    return result


@router.post("/{connection_id}/terminate", response_model=ActionResult,
             status_code=status.HTTP_202_ACCEPTED)
async def terminate_connection(services: ServicesDep, who: OperateDep,
                               controller: ControllerDep,
                               connection_id: ConnectionRef) -> ActionResult:
    ident, result = await _act(services, who, "terminate", connection_id)
    await controller.terminate(Target("connection", str(ident)))
    return result


@router.post("/{connection_id}/rekey", response_model=ActionResult,
             status_code=status.HTTP_202_ACCEPTED)
async def rekey_connection(services: ServicesDep, who: OperateDep, controller: ControllerDep,
                           connection_id: ConnectionRef) -> ActionResult:
    ident, result = await _act(services, who, "rekey", connection_id)
    await controller.rekey(Target("connection", str(ident)))
    return result
