"""API tokens (admin only): the plaintext is returned once, at creation."""

from __future__ import annotations

from fastapi import APIRouter, status

from xfrmctl.store import repo
from xfrmctl.store.models import ApiToken

from .. import crud
from ..deps import AdminDep, IdPath, PagingDep, ServicesDep
from ..schemas.tokens import TokenCreate, TokenCreated, TokenPublic, TokensPublic

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.get("", response_model=TokensPublic)
async def list_tokens(services: ServicesDep, _: AdminDep, paging: PagingDep) -> TokensPublic:
    rows, count = await crud.page(services, ApiToken, paging)
    return TokensPublic(data=[TokenPublic.model_validate(r) for r in rows], count=count)


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
async def create_token(services: ServicesDep, who: AdminDep, body: TokenCreate) -> TokenCreated:
    token, plaintext = await services.db.run(
        repo.create_token, name=body.name, scopes=body.scopes, expires_at=body.expires_at,
        actor=who.actor)
    public = TokenPublic.model_validate(token)
    return TokenCreated(**public.model_dump(), token=plaintext)


@router.get("/{token_id}", response_model=TokenPublic)
async def read_token(services: ServicesDep, _: AdminDep, token_id: IdPath) -> ApiToken:
    return await crud.get(services, ApiToken, token_id)


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(services: ServicesDep, who: AdminDep, token_id: IdPath) -> None:
    """Revoke: the token stops working at once; the record stays for the audit trail."""
    await services.db.run(repo.revoke_token, token_id, actor=who.actor)
