"""Shared steps of the desired-state routers: write in a worker thread with an audit
record, then tell the daemon (if running) what changed so it takes effect live."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from xfrmctl.port import ConfigChange, ConfigKind
from xfrmctl.store import models as m
from xfrmctl.store import repo

from .deps import Paging, Principal, Services

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=m.Base)
Check = Callable[[Session, dict[str, Any]], None]


async def notify(services: Services, kind: ConfigKind, ident: int, change: ConfigChange) -> None:
    """Tell the daemon; the change is committed already, so a failure is only logged."""
    if services.controller is None:
        return
    try:
        await services.controller.config_changed(kind, ident, change)
    except Exception:
        log.exception("daemon failed to apply %s %s %s", kind, ident, change)


def _create(session: Session, model: type[ModelT], values: dict[str, Any], actor: str,
            check: Check | None) -> ModelT:
    if check is not None:
        check(session, values)
    return repo.create(session, model, values, actor=actor)


def _update(session: Session, model: type[ModelT], ident: int, values: dict[str, Any],
            actor: str, check: Check | None, version: int | None = None) -> ModelT:
    repo.check_version(repo.get(session, model, ident), version)
    columns = model.__table__.columns
    for field, value in values.items():
        if value is None and not columns[field].nullable:
            raise repo.InvalidField(field, f"{field} may not be null")
    if check is not None:
        current = repo.snapshot(repo.get(session, model, ident))
        check(session, {**current, **values})
    return repo.update(session, model, ident, values, actor=actor)


async def create(services: Services, who: Principal, model: type[ModelT], kind: ConfigKind,
                 values: Mapping[str, Any], check: Check | None = None) -> ModelT:
    obj = await services.db.run(_create, model, dict(values), who.actor, check)
    await notify(services, kind, obj.id, "created")  # type: ignore[attr-defined]
    return obj


async def update(services: Services, who: Principal, model: type[ModelT], kind: ConfigKind,
                 ident: int, values: Mapping[str, Any], check: Check | None = None,
                 version: int | None = None) -> ModelT:
    """Update; with `version` (If-Match) only if the row is still at that version."""
    obj = await services.db.run(_update, model, ident, dict(values), who.actor, check,
                                version)
    await notify(services, kind, ident, "updated")
    return obj


def _delete(session: Session, model: type[ModelT], ident: int, actor: str,
            version: int | None) -> None:
    repo.check_version(repo.get(session, model, ident), version)
    repo.delete(session, model, ident, actor=actor)


async def delete(services: Services, who: Principal, model: type[ModelT], kind: ConfigKind,
                 ident: int, version: int | None = None) -> None:
    await services.db.run(_delete, model, ident, who.actor, version)
    await notify(services, kind, ident, "deleted")


async def get(services: Services, model: type[ModelT], ident: int) -> ModelT:
    return await services.db.run(repo.get, model, ident)


async def page(services: Services, model: type[ModelT], paging: Paging,
               **filters: object) -> tuple[list[ModelT], int]:
    return await services.db.run(repo.list_page, model, offset=paging.offset,
                                 limit=paging.limit, filters=filters)
