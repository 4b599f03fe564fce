"""Records what the daemon does in the database: protocol events, IKE_SAs and CHILD_SAs
as negotiated, and CHILD_SA counters read from the kernel.

The controller's event listener only queues (it never waits); one writer task turns a
batch of queued events into database operations and runs them in one transaction off
the loop (`Database.run`). Rows are built from the controller's state when the batch is
written, so they describe the SA as installed. A second task copies traffic counters
every `interval` seconds. Events written through `Database.run` reach its listeners (the
API's SSE bus) after commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from xfrmctl.port import ChildSaInfo, IkeSaInfo
from xfrmctl.store import models as m
from xfrmctl.store import repo
from xfrmctl.store.db import Database

from . import dbfaults
from .controller import Controller
from .fleet import Membership

log = logging.getLogger("xfrmctl.daemon.recorder")
Op = tuple[str, Any]  # ("event" | "ike" | "child" | "del_ike" | "del_child", payload)


class Recorder:
    def __init__(self, controller: Controller, db: Database, *, interval: float = 10.0,
                 queue_size: int = 10_000, batch: int = 500,
                 member: Membership | None = None) -> None:
        self.controller = controller
        self.db = db
        self.member = member  # a fleet gateway: its rows carry it, ids are qualified
        self.interval = interval
        self.batch = batch
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue(queue_size)
        self._successor: dict[str, str] = {}  # rekeyed IKE_SA id -> its replacement
        self._counters: dict[str, tuple[int, int, int, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.paused: dbfaults.DbFault | None = None  # the database fault we wait out
        self.retry_first = dbfaults.RETRY_FIRST
        self._last_wait = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen to the controller, drop SA rows it does not know, start the tasks."""
        self.controller.event_listeners.append(self._on_event)
        known = [sa.id for sa in await self.controller.list_ike_sas()]
        try:
            await self.db.run(_keep_only, [self._id(k) for k in known],
                              self.member.id if self.member else None)
        except Exception as exc:  # a database fault must not stop the daemon
            fault = dbfaults.classify(exc)
            if fault is None:
                raise
            log.error("recording: %s; stale SA rows stay until the next start", fault.sentence)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer(), name="recorder-writer"),
                       loop.create_task(self._poll_counters(), name="recorder-counters")]

    async def flush(self) -> None:
        """Wait until every queued event is written."""
        await self._queue.join()

    async def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        with contextlib.suppress(ValueError):
            self.controller.event_listeners.remove(self._on_event)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ events

    def _on_event(self, kind: str, fields: dict[str, object]) -> None:
        try:
            self._queue.put_nowait((kind, dict(fields)))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("event queue full: %d events not recorded", self.dropped)

    async def _writer(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self.batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._write([self._fleet_op(op) for item in items
                                   for op in self._ops(*item)])
            finally:
                for _ in items:
                    self._queue.task_done()

    async def _write(self, ops: list[Op]) -> None:
        """One transaction; a database fault (locked, read-only, full, corrupt) is waited
        out with back-off, keeping the batch (events queue up meanwhile, up to the
        queue's size); a row the database refuses is dropped alone."""
        wait: float | None = None
        while True:
            try:
                await self.db.run(apply_ops, ops)
                break
            except Exception as exc:
                fault = dbfaults.classify(exc)
                if fault is None:
                    await self._write_one_by_one(ops)
                    break
                wait = self.retry_first if wait is None else dbfaults.backoff(wait)
                if self.paused is None or wait > self._last_wait:
                    log.error("recording paused: %s; retrying in %.0f s (tunnels and "
                              "negotiation go on)", fault.sentence, wait)
                self.paused, self._last_wait = fault, wait
                await asyncio.sleep(wait)
        if self.paused is not None:
            log.warning("recording resumed: the database is writable again")
            self.paused = None

    async def _write_one_by_one(self, ops: list[Op]) -> None:
        log.error("recording %d operations failed; retrying one by one", len(ops))
        for op in ops:  # one bad row must not lose the others
            try:
                await self.db.run(apply_ops, [op])
            except Exception as exc:
                log.error("not recorded: %s: %s", op[0], exc)

    def _ops(self, kind: str, fields: dict[str, object]) -> list[Op]:
        ops: list[Op] = [("event", self._event(kind, fields))]
        sa_id = str(fields.get("ike_sa"))
        if kind == "IkeSaUp":
            ops += self._ike_op(sa_id)
        elif kind == "IkeSaRekeyed":
            new_id = str(fields.get("new_ike_sa"))
            self._successor[sa_id] = new_id
            ops += self._ike_op(new_id)
            ops += [("child", row) for row in self._child_rows(new_id)]
        elif kind == "IkeSaDown":
            ops.append(("del_ike", sa_id))
            self._successor = {k: v for k, v in self._successor.items() if sa_id not in (k, v)}
        elif kind == "ChildSaNegotiated":
            info = self.controller.child_sa_info(int(str(fields["spi_in"])))
            if info is not None:
                row = child_row(info, self._current(info.ike_sa_id))
                ops += [*self._ike_op(row["ike_sa_id"]), ("child", row)]
        elif kind == "ChildSaDeleted":
            ops.append(("del_child", str(fields.get("child_id"))))
        return ops

    def _event(self, kind: str, fields: dict[str, object]) -> dict[str, Any]:
        name = fields.get("connection")
        record = self.controller.connections.get(name) if isinstance(name, str) else None
        conn_id = record.id if record else None
        if conn_id is None and isinstance(fields.get("ike_sa"), int):  # e.g. IkeSaRekeyed
            info = self.controller.ike_sa_info(int(str(fields["ike_sa"])))
            conn_id, name = (info.connection_id, info.connection_name) if info else (None, name)
        why = fields.get("reason") or fields.get("message")
        text = " ".join(str(p) for p in (kind, name or "", why or "") if p)
        return {"type_": kind, "message": text, "connection_id": conn_id,
                "data": json.loads(json.dumps(fields, default=str))}

    def _current(self, sa_id: str) -> str:
        while sa_id in self._successor:
            sa_id = self._successor[sa_id]
        return sa_id

    def _ike_op(self, sa_id: str) -> list[Op]:
        info = self.controller.ike_sa_info(int(sa_id)) if sa_id.isdigit() else None
        return [("ike", ike_row(info))] if info is not None else []

    def _child_rows(self, ike_sa_id: str) -> Iterable[dict[str, Any]]:
        """Rows of the CHILD_SAs that now belong to IKE_SA `ike_sa_id`."""
        spis = [spi for spi, child in self.controller.children.items()
                if self._current(str(child.event.ike_sa)) == ike_sa_id]
        for spi_in in spis:
            info = self.controller.child_sa_info(spi_in)
            if info is not None:
                yield child_row(info, ike_sa_id)

    # ------------------------------------------------------------------ counters

    async def _poll_counters(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.record_counters()
            except Exception as exc:
                fault = dbfaults.classify(exc)
                if fault is None:
                    log.exception("recording CHILD_SA counters failed")
                else:  # the next round tries again
                    log.warning("CHILD_SA counters not recorded: %s", fault.sentence)

    async def record_counters(self) -> int:
        """Copy the kernel's counters of every CHILD_SA that changed; returns rows hit."""
        current = {sa.id: (sa.traffic.bytes_in, sa.traffic.bytes_out, sa.traffic.packets_in,
                           sa.traffic.packets_out)
                   for sa in await self.controller.list_child_sas()}
        changed = {k: v for k, v in current.items() if self._counters.get(k) != v}
        self._counters = current
        if not changed:
            return 0
        return await self.db.run(repo.update_child_counters,
                                 {self._id(k): v for k, v in changed.items()})

    # ------------------------------------------------------------------ the fleet

    def _id(self, sa_id: str) -> str:
        return self.member.qualify(sa_id) if self.member else sa_id

    def _fleet_op(self, op: Op) -> Op:
        """The operation as this gateway of the fleet records it: ids unique in the
        fleet, rows and events carrying the gateway."""
        if self.member is None:
            return op
        kind, payload = op
        if kind in ("del_ike", "del_child"):
            return kind, self._id(payload)
        if kind == "event":
            return kind, {**payload, "data": {**(payload["data"] or {}),
                                              "gateway": self.member.name}}
        row = {**payload, "id": self._id(payload["id"]), "gateway_id": self.member.id}
        if kind == "child":
            row["ike_sa_id"] = self._id(payload["ike_sa_id"])
        return kind, row


# --------------------------------------------------------------------------- rows


def ike_row(info: IkeSaInfo) -> dict[str, Any]:
    row = asdict(info)
    for extra in ("connection_name", "nat_local", "nat_remote", "proposal", "remote_eap_id",
                  "virtual_ip"):
        row.pop(extra)
    row["spi_i"], row["spi_r"] = f"{info.spi_i:016x}", f"{info.spi_r:016x}"
    return row


def child_row(info: ChildSaInfo, ike_sa_id: str) -> dict[str, Any]:
    row = asdict(info)
    for extra in ("connection_id", "traffic", "encap", "proposal", "reqid", "mtu", "mss"):
        row.pop(extra)
    row.update(ike_sa_id=ike_sa_id, spi_in=f"{info.spi_in:08x}",
               spi_out=f"{info.spi_out:08x}", local_ts=list(info.local_ts),
               remote_ts=list(info.remote_ts))
    return row


def apply_ops(session: Session, ops: list[Op]) -> None:
    """Run recorded operations in order, in the caller's transaction."""
    for kind, payload in ops:
        _APPLY[kind](session, payload)
        session.flush()


def _exists_or_none(session: Session, model: type[m.Base], ident: int | None) -> int | None:
    """`ident` if the row is still there (it may have been deleted meanwhile), else None."""
    return ident if ident is not None and session.get(model, ident) is not None else None


def _ike(session: Session, row: dict[str, Any]) -> None:
    repo.upsert_ike_sa(session, {
        **row, "connection_id": _exists_or_none(session, m.Connection, row["connection_id"])})


def _child(session: Session, row: dict[str, Any]) -> None:
    if session.get(m.IkeSaRecord, row["ike_sa_id"]) is None:
        return  # its IKE_SA is gone already
    repo.upsert_child_sa(session, {
        **row, "child_id": _exists_or_none(session, m.Child, row["child_id"])})


def _event(session: Session, values: dict[str, Any]) -> None:
    repo.record_event(session, m.EventKind.PROTOCOL, **values)


def _delete_child(session: Session, ident: str) -> None:
    session.execute(delete(m.ChildSaRecord).where(m.ChildSaRecord.id == ident))


_APPLY: dict[str, Callable[[Session, Any], object]] = {
    "event": _event, "ike": _ike, "child": _child, "del_ike": repo.delete_ike_sa,
    "del_child": _delete_child,
}


def _keep_only(session: Session, known: list[str], gateway: int | None = None) -> int:
    """Delete IKE_SA rows (and their CHILD_SAs) the running daemon does not hold: only
    its own (and those recorded before the fleet), never another gateway's."""
    stale = session.scalars(select(m.IkeSaRecord.id).where(
        m.IkeSaRecord.id.not_in(known),
        or_(m.IkeSaRecord.gateway_id.is_(None), m.IkeSaRecord.gateway_id == gateway))).all()
    for ident in stale:
        repo.delete_ike_sa(session, ident)
    return len(stale)
