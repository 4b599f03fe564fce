"""EAP users (remote access with EAP-MSCHAPv2): write-only like secrets. A password is
turned into its NT hash at once and only that is stored, encrypted; no response, log line
or audit record holds either."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import SecretStr

from xfrmctl.store import repo
from xfrmctl.store.models import EapUser

from .. import crud
from ..deps import AdminDep, IdPath, PagingDep, ReadDep, ServicesDep
from ..schemas.config import EapUserCreate, EapUserPublic, EapUsersPublic, EapUserUpdate

router = APIRouter(prefix="/eap-users", tags=["eap-users"])


def _plain(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


@router.get("", response_model=EapUsersPublic)
async def list_eap_users(services: ServicesDep, _: ReadDep,
                         paging: PagingDep) -> EapUsersPublic:
    rows, count = await crud.page(services, EapUser, paging)
    return EapUsersPublic(data=[EapUserPublic.model_validate(r) for r in rows], count=count)


@router.post("", response_model=EapUserPublic, status_code=status.HTTP_201_CREATED)
async def create_eap_user(services: ServicesDep, who: AdminDep, body: EapUserCreate) -> EapUser:
    user = await services.db.run(
        repo.create_eap_user, services.box, name=body.name, password=_plain(body.password),
        nt_hash=_plain(body.nt_hash), enabled=body.enabled, version=body.version,
        actor=who.actor)
    await crud.notify(services, "eap_user", user.id, "created")
    return user


@router.get("/{user_id}", response_model=EapUserPublic)
async def read_eap_user(services: ServicesDep, _: ReadDep, user_id: IdPath) -> EapUser:
    return await crud.get(services, EapUser, user_id)


@router.patch("/{user_id}", response_model=EapUserPublic)
async def update_eap_user(services: ServicesDep, who: AdminDep, user_id: IdPath,
                          body: EapUserUpdate) -> EapUser:
    user = await services.db.run(
        repo.update_eap_user, services.box, user_id, password=_plain(body.password),
        nt_hash=_plain(body.nt_hash), enabled=body.enabled, version=body.version,
        actor=who.actor)
    await crud.notify(services, "eap_user", user_id, "updated")
    return user


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_eap_user(services: ServicesDep, who: AdminDep, user_id: IdPath) -> None:
    await crud.delete(services, who, EapUser, "eap_user", user_id)
