"""Named proposal lists (IKE, ESP or AH) in strongSwan keyword syntax."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from xfrmctl.ike.constants import ProtocolId
from xfrmctl.store import repo
from xfrmctl.store.models import Proposal, ProposalProtocol

from .. import crud
from ..deps import AdminDep, IdPath, PagingDep, ReadDep, ServicesDep
from ..schemas.common import check_proposals
from ..schemas.config import ProposalCreate, ProposalPublic, ProposalsPublic, ProposalUpdate

router = APIRouter(prefix="/proposals", tags=["proposals"])
_PROTOCOL = {ProposalProtocol.IKE: ProtocolId.IKE, ProposalProtocol.ESP: ProtocolId.ESP,
             ProposalProtocol.AH: ProtocolId.AH}


def check_proposal(_session: Session, v: dict[str, Any]) -> None:
    try:
        check_proposals(v["text"], _PROTOCOL[ProposalProtocol(v["protocol"])])
    except ValueError as exc:
        raise repo.InvalidField("text", str(exc)) from None


@router.get("", response_model=ProposalsPublic)
async def list_proposals(services: ServicesDep, _: ReadDep, paging: PagingDep,
                         protocol: ProposalProtocol | None = None) -> ProposalsPublic:
    rows, count = await crud.page(services, Proposal, paging, protocol=protocol)
    return ProposalsPublic(data=[ProposalPublic.model_validate(r) for r in rows], count=count)


@router.post("", response_model=ProposalPublic, status_code=status.HTTP_201_CREATED)
async def create_proposal(services: ServicesDep, who: AdminDep, body: ProposalCreate
                          ) -> Proposal:
    return await crud.create(services, who, Proposal, "proposal", body.model_dump(),
                             check_proposal)


@router.get("/{proposal_id}", response_model=ProposalPublic)
async def read_proposal(services: ServicesDep, _: ReadDep, proposal_id: IdPath) -> Proposal:
    return await crud.get(services, Proposal, proposal_id)


@router.patch("/{proposal_id}", response_model=ProposalPublic)
async def update_proposal(services: ServicesDep, who: AdminDep, proposal_id: IdPath,
                          body: ProposalUpdate) -> Proposal:
    return await crud.update(services, who, Proposal, "proposal", proposal_id,
                             body.model_dump(exclude_unset=True), check_proposal)


@router.delete("/{proposal_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_proposal(services: ServicesDep, who: AdminDep, proposal_id: IdPath) -> None:
    await crud.delete(services, who, Proposal, "proposal", proposal_id)
