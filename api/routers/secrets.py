"""Secrets (PSKs, private keys): write-only. Values are encrypted at rest and no
response, log line or audit record ever holds them."""

from __future__ import annotations

from fastapi import APIRouter, status

from xfrmctl.store import repo
from xfrmctl.store.models import Secret, SecretKind

from .. import crud
from ..deps import AdminDep, IdPath, PagingDep, ReadDep, ServicesDep
from ..schemas.config import SecretCreate, SecretPublic, SecretsPublic, SecretUpdate

router = APIRouter(prefix="/secrets", tags=["secrets"])


@router.get("", response_model=SecretsPublic)
async def list_secrets(services: ServicesDep, _: ReadDep, paging: PagingDep,
                       kind: SecretKind | None = None) -> SecretsPublic:
    rows, count = await crud.page(services, Secret, paging, kind=kind)
    return SecretsPublic(data=[SecretPublic.model_validate(r) for r in rows], count=count)


@router.post("", response_model=SecretPublic, status_code=status.HTTP_201_CREATED)
async def create_secret(services: ServicesDep, who: AdminDep, body: SecretCreate) -> Secret:
    secret = await services.db.run(
        repo.create_secret, services.box, name=body.name, kind=body.kind,
        value=body.value.get_secret_value().encode(), version=body.version, actor=who.actor)
    await crud.notify(services, "secret", secret.id, "created")
    return secret


@router.get("/{secret_id}", response_model=SecretPublic)
async def read_secret(services: ServicesDep, _: ReadDep, secret_id: IdPath) -> Secret:
    return await crud.get(services, Secret, secret_id)


@router.put("/{secret_id}", response_model=SecretPublic)
async def replace_secret(services: ServicesDep, who: AdminDep, secret_id: IdPath,
                         body: SecretUpdate) -> Secret:
    """Replace the value and its version (the name and kind stay; no version: none)."""
    secret = await services.db.run(repo.replace_secret_value, services.box, secret_id,
                                   body.value.get_secret_value().encode(),
                                   version=body.version, actor=who.actor)
    await crud.notify(services, "secret", secret_id, "updated")
    return secret


@router.delete("/{secret_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_secret(services: ServicesDep, who: AdminDep, secret_id: IdPath) -> None:
    await crud.delete(services, who, Secret, "secret", secret_id)
