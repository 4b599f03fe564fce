"""Installed IPsec policies, and the raw kernel view (XFRM states and policies)."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from typing import Any

from fastapi import APIRouter, HTTPException, status

from ..deps import ControllerDep, IdQuery, PagingDep, ReadDep, ServicesDep
from ..schemas.live import KernelViewPublic, PoliciesPublic, PolicyPublic

router = APIRouter(prefix="/policies", tags=["policies"])
kernel_router = APIRouter(prefix="/kernel", tags=["kernel"])
_KEY_FIELDS = {"key"}  # algorithm keys never leave the daemon


def plain(value: Any) -> Any:
    """Kernel dataclasses as JSON-safe data, with key material dropped."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name not in _KEY_FIELDS}
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, ipaddress._BaseAddress | ipaddress._BaseNetwork):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return "<redacted>"
    return value


@router.get("", response_model=PoliciesPublic)
async def list_policies(controller: ControllerDep, _: ReadDep, paging: PagingDep,
                        connection_id: IdQuery = None) -> PoliciesPublic:
    rows = [p for p in await controller.list_policies()
            if connection_id is None or p.connection_id == connection_id]
    window = rows[paging.offset: paging.offset + paging.limit]
    return PoliciesPublic(data=[PolicyPublic.model_validate(p) for p in window],
                          count=len(rows))


@kernel_router.get("", response_model=KernelViewPublic)
async def kernel_view(services: ServicesDep, _: ReadDep) -> KernelViewPublic:
    """What the kernel holds, read directly when the API has a kernel handle, else
    through the daemon."""
    if services.kernel is not None:
        states = await services.kernel.dump_sas()
        policies = await services.kernel.dump_policies()
        return KernelViewPublic(states=[plain(s) for s in states],
                                policies=[plain(p) for p in policies])
    if services.controller is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the daemon is not running")
    view = await services.controller.kernel_view()
    return KernelViewPublic(states=[plain(s) for s in view.states],
                            policies=[plain(p) for p in view.policies])
