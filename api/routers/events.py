"""Events: history with filters, and a live Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from xfrmctl.store import repo
from xfrmctl.store.models import EventKind

from ..deps import IdQuery, PagingDep, ReadDep, Services, ServicesDep
from ..schemas.common import INT32
from ..schemas.events import EventPublic, EventsPublic

router = APIRouter(prefix="/events", tags=["events"])
KEEPALIVE_SECONDS = 15.0
_EVENT_ID = re.compile(r"[0-9]{1,10}")
TypeFilter = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


@router.get("", response_model=EventsPublic)
async def list_events(services: ServicesDep, _: ReadDep, paging: PagingDep,
                      kind: EventKind | None = None, type: TypeFilter = None,
                      connection_id: IdQuery = None, since: datetime | None = None
                      ) -> EventsPublic:
    """Newest first. `since` without a time zone is taken as UTC."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    rows, count = await services.db.run(
        repo.list_events, offset=paging.offset, limit=paging.limit, kind=kind, type_=type,
        connection_id=connection_id, since=since)
    return EventsPublic(data=[EventPublic.model_validate(r) for r in rows], count=count)


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream_events(
    services: ServicesDep, _: ReadDep, kind: EventKind | None = None,
    type: TypeFilter = None, connection_id: IdQuery = None,
    after_id: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    max_events: Annotated[int | None, Query(ge=1, le=100000)] = None,
) -> StreamingResponse:
    """`text/event-stream` of events as they happen. With `after_id` (or the
    `Last-Event-ID` header on reconnect) the missed events are replayed first.
    `max_events` ends the stream after that many events."""
    if after_id is None and last_event_id is not None:
        after_id = _event_id(last_event_id)

    def wanted(event: dict[str, Any]) -> bool:
        return ((kind is None or event["kind"] == kind)
                and (type is None or event["type"] == type)
                and (connection_id is None or event["connection_id"] == connection_id))

    frames = _frames(services, after_id, wanted, max_events)
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event_id(header: str) -> int:
    """The Last-Event-ID header: an event id as sent in `id:` (ASCII digits, in range)."""
    if not _EVENT_ID.fullmatch(header) or int(header) > INT32:
        raise RequestValidationError([{
            "loc": ("header", "last-event-id"), "type": "value_error",
            "msg": f"Last-Event-ID must be an event id from 0 to {INT32}"}])
    return int(header)


def _frame(event: dict[str, Any]) -> str:
    body = EventPublic.model_validate(event).model_dump_json()
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {body}\n\n"


async def _frames(services: Services, after_id: int | None, wanted: Any,
                  max_events: int | None) -> AsyncIterator[str]:
    sent = 0
    async with services.bus.subscribe() as queue:
        yield ": stream open\n\n"
        last = after_id if after_id is not None else -1
        if after_id is not None:  # replay what was missed; subscribed first, so no gap
            rows, _ = await services.db.run(repo.list_events, after_id=after_id, limit=1000)
            for row in reversed(rows):
                event = repo.event_dict(row)
                last = row.id
                if wanted(event):
                    yield _frame(event)
                    sent += 1
                    if max_events is not None and sent >= max_events:
                        return
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if item is None:
                yield "event: gap\ndata: {}\n\n"
                continue
            if item["id"] <= last or not wanted(item):
                continue
            last = item["id"]
            yield _frame(item)
            sent += 1
            if max_events is not None and sent >= max_events:
                return
