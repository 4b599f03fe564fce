"""Children (CHILD_SA configurations) of a connection: selectors, mode, interface."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from xfrmctl.store import repo
from xfrmctl.store.models import Child, Connection, InterfaceKind

from .. import crud
from ..deps import AdminDep, IdPath, IdQuery, PagingDep, ReadDep, ServicesDep
from ..schemas.config import ChildCreate, ChildPublic, ChildrenPublic, ChildUpdate
from .connections import ConnectionRef, find_connection, refuse_if_file_managed

router = APIRouter(tags=["children"])


def check_child(session: Session, v: dict[str, Any]) -> None:
    """Rules across fields; each failure names the field to fix. The children of a
    file-managed connection are changed through its file only (409)."""
    parent = session.get(Connection, v.get("connection_id"))
    if parent is not None:
        refuse_if_file_managed(parent)
    if not v.get("esp_proposals") and not v.get("ah_proposals"):
        raise repo.InvalidField("esp_proposals", "give esp_proposals or ah_proposals")
    if v.get("esp_proposals") and v.get("ah_proposals"):
        raise repo.InvalidField("ah_proposals", "give either esp_proposals or ah_proposals")
    kind = v.get("interface_kind")
    if kind is None:
        for field in ("interface_name", "interface_addresses", "routes", "mtu"):
            if v.get(field):
                raise repo.InvalidField(field, f"{field} needs a route-based child "
                                               "(set interface_kind to xfrmi or vti)")
    elif kind == InterfaceKind.XFRMI and v.get("if_id") is None:
        raise repo.InvalidField("if_id", "an xfrmi interface needs an if_id")
    elif kind == InterfaceKind.VTI and v.get("if_id") is not None:
        raise repo.InvalidField("if_id", "a vti interface uses marks, not an if_id")
    for mark in ("mark_in", "mark_out"):
        if v.get(f"{mark}_mask") is not None and v.get(mark) is None:
            raise repo.InvalidField(f"{mark}_mask", f"{mark}_mask needs {mark}")
    _check_lifetimes(v)


def _check_lifetimes(v: dict[str, Any]) -> None:
    for soft, hard in (("rekey_time", "life_time"), ("rekey_bytes", "life_bytes"),
                       ("rekey_packets", "life_packets")):
        if v.get(hard) and v.get(soft) and v[soft] >= v[hard]:
            raise repo.InvalidField(soft, f"{soft} must be below {hard} (soft < hard limit)")


@router.get("/children", response_model=ChildrenPublic)
async def list_children(services: ServicesDep, _: ReadDep, paging: PagingDep,
                        connection_id: IdQuery = None) -> ChildrenPublic:
    rows, count = await crud.page(services, Child, paging, connection_id=connection_id)
    return ChildrenPublic(data=[ChildPublic.model_validate(r) for r in rows], count=count)


@router.get("/connections/{connection_id}/children", response_model=ChildrenPublic)
async def list_connection_children(services: ServicesDep, _: ReadDep, paging: PagingDep,
                                   connection_id: ConnectionRef) -> ChildrenPublic:
    parent = await services.db.run(find_connection, connection_id)
    rows, count = await crud.page(services, Child, paging, connection_id=parent.id)
    return ChildrenPublic(data=[ChildPublic.model_validate(r) for r in rows], count=count)


@router.post("/connections/{connection_id}/children", response_model=ChildPublic,
             status_code=status.HTTP_201_CREATED)
async def create_child(services: ServicesDep, who: AdminDep, connection_id: ConnectionRef,
                       body: ChildCreate) -> Child:
    parent = await services.db.run(find_connection, connection_id)
    values = {**_stored(body.model_dump()), "connection_id": parent.id}
    return await crud.create(services, who, Child, "child", values, check_child)


@router.get("/children/{child_id}", response_model=ChildPublic)
async def read_child(services: ServicesDep, _: ReadDep, child_id: IdPath) -> Child:
    return await crud.get(services, Child, child_id)


@router.patch("/children/{child_id}", response_model=ChildPublic)
async def update_child(services: ServicesDep, who: AdminDep, child_id: IdPath,
                       body: ChildUpdate) -> Child:
    return await crud.update(services, who, Child, "child", child_id,
                             _stored(body.model_dump(exclude_unset=True)), check_child)


@router.delete("/children/{child_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_child(services: ServicesDep, who: AdminDep, child_id: IdPath) -> None:
    await services.db.run(_deletable_child, child_id)
    await crud.delete(services, who, Child, "child", child_id)


def _stored(values: dict[str, Any]) -> dict[str, Any]:
    """The column keeps `mss` as text ("auto", "off" or the number)."""
    if values.get("mss") is not None:
        values["mss"] = str(values["mss"])
    return values


def _deletable_child(session: Session, child_id: int) -> None:
    child = repo.get(session, Child, child_id)
    refuse_if_file_managed(repo.get(session, Connection, child.connection_id))
