"""Event schemas: protocol events and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from xfrmctl.store.models import EventKind

from .common import Page


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    ts: datetime
    kind: EventKind
    type: str
    connection_id: int | None
    actor: str | None
    resource: str | None
    resource_id: str | None
    message: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    data: dict[str, Any] | None


class EventsPublic(Page[EventPublic]):
    pass
