"""Installed IPsec policies, and the raw kernel view (XFRM states and policies)."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ControllerDep, IdQuery, PagingDep, ReadDep
from ..schemas.live import KernelViewPublic, PoliciesPublic, PolicyPublic

router = APIRouter(prefix="/policies", tags=["policies"])
kernel_router = APIRouter(prefix="/kernel", tags=["kernel"])


@router.get("", response_model=PoliciesPublic)
async def list_policies(controller: ControllerDep, _: ReadDep, paging: PagingDep,
                        connection_id: IdQuery = None) -> PoliciesPublic:
    rows = [p for p in await controller.list_policies()
            if connection_id is None or p.connection_id == connection_id]
    window = rows[paging.offset: paging.offset + paging.limit]
    return PoliciesPublic(data=[PolicyPublic.model_validate(p) for p in window],
                          count=len(rows))


@kernel_router.get("", response_model=KernelViewPublic)
async def kernel_view(controller: ControllerDep, _: ReadDep) -> KernelViewPublic:
    """What the kernel holds, as the daemon reads it (one shape, whatever the wiring)."""
    return KernelViewPublic.model_validate(await controller.kernel_view())
