"""Peers: remote gateways, referenced by connections."""

from __future__ import annotations

from fastapi import APIRouter, status

from xfrmctl.store.models import Peer

from .. import crud
from ..deps import AdminDep, IdPath, PagingDep, ReadDep, ServicesDep
from ..schemas.config import PeerCreate, PeerPublic, PeersPublic, PeerUpdate

router = APIRouter(prefix="/peers", tags=["peers"])


@router.get("", response_model=PeersPublic)
async def list_peers(services: ServicesDep, _: ReadDep, paging: PagingDep) -> PeersPublic:
    rows, count = await crud.page(services, Peer, paging)
    return PeersPublic(data=[PeerPublic.model_validate(r) for r in rows], count=count)


@router.post("", response_model=PeerPublic, status_code=status.HTTP_201_CREATED)
async def create_peer(services: ServicesDep, who: AdminDep, body: PeerCreate) -> Peer:
    return await crud.create(services, who, Peer, "peer", body.model_dump())


@router.get("/{peer_id}", response_model=PeerPublic)
async def read_peer(services: ServicesDep, _: ReadDep, peer_id: IdPath) -> Peer:
    return await crud.get(services, Peer, peer_id)


@router.patch("/{peer_id}", response_model=PeerPublic)
async def update_peer(services: ServicesDep, who: AdminDep, peer_id: IdPath,
                      body: PeerUpdate) -> Peer:
    return await crud.update(services, who, Peer, "peer", peer_id,
                             body.model_dump(exclude_unset=True))


@router.delete("/{peer_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_peer(services: ServicesDep, who: AdminDep, peer_id: IdPath) -> None:
    await crud.delete(services, who, Peer, "peer", peer_id)
