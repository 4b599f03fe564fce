"""A connection's life: up, down and why, and what comes next (retry, dead peer action,
close action, trap again). Every decision is keyed by the `DownReason` enum: the IKE
core's reason text is turned into one once, where it arrives (`down_reason`)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from xfrmctl.ike.events import IkeSaDown, NegotiationFailed
from xfrmctl.ike.sa import IkeState
from xfrmctl.port import ConnectionState, DownReason, FailureInfo

from . import conf as cf
from .records import ChildDown, ConnectionRecord

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("xfrmctl.daemon")
RETRY_DELAY = 10.0  # seconds before re-initiating a start/restart connection
UNMATCHED_LOG_INTERVAL = 60.0  # seconds: one log line and event per remote address
SUPERSEDED = frozenset({"rekeyed"})  # an IKE SA that ended this way lives on in another


def down_reason(text: str) -> DownReason | None:
    """Why an IKE SA went, as a `DownReason`; None when it was superseded (rekeyed: its
    successor carries on, nothing is down)."""
    return None if text in SUPERSEDED else DownReason.of(text)


class Lifecycle:
    """Connection states and the reactions to IKE SAs going down or failing."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def on_ike_down(self, event: IkeSaDown) -> None:
        c, reason = self.c, down_reason(event.reason)
        c.changes.reauth_failed(event.ike_sa)
        vip = c._vips.pop(event.ike_sa, None)
        if vip is not None and reason is not None:
            c.installer.queue(lambda: c.child_sas.vip_address(vip, add=False))
        record = c.connections.get(event.connection)
        if reason is None or record is None or any(
                sa.name == record.name and sa.state is not IkeState.CLOSED
                for sa in c.manager.all()):
            return
        c.installer.forget_lingering(record.name)  # no IKE SA left: nothing more in flight
        if reason is DownReason.OTHER or not record.detail:
            record.detail = {"message": event.reason}
        self.connection_down(record, reason)

    def on_failed(self, event: NegotiationFailed) -> None:
        self.c.failures[event.reason.value] = self.c.failures.get(event.reason.value, 0) + 1
        if event.ike_sa in self.c._reauths:  # the old IKE SA stays meanwhile
            log.warning("reauthentication of %s failed: %s: %s", event.connection,
                        event.reason.value, event.message)
            if event.child is not None:
                self.c.changes.reauth_child_done(event.ike_sa, event.child)
            else:
                self.c.changes.reauth_failed(event.ike_sa)
            return
        record = self.c.connections.get(event.connection)
        if record is None:
            self.unmatched(event)
            return
        what = f"{event.connection}/{event.child}" if event.child else event.connection
        log.warning("negotiation failed: %s: %s: %s (ours: %s; theirs: %s)", what,
                    event.reason.value, event.message, "; ".join(event.ours) or "-",
                    "; ".join(event.theirs) or "-")
        reason = DownReason.of(event.reason.value)
        detail: dict[str, object] = {"message": event.message, "ours": list(event.ours),
                                     "theirs": list(event.theirs)}
        sa = self.c.manager.get(event.ike_sa)
        if event.child is not None or (sa is not None and sa.state is IkeState.ESTABLISHED):
            self.children_refused(record, event, reason, detail)
            return
        if any(sa.id != event.ike_sa and sa.state is IkeState.ESTABLISHED
               for sa in self.c._sas_of(record)):
            return  # another attempt (e.g. a stranger's) failed; the tunnel is up
        record.detail = detail
        self.connection_down(record, reason)

    def children_refused(self, record: ConnectionRecord, event: NegotiationFailed,
                         reason: DownReason, detail: dict[str, object]) -> None:
        """A CHILD_SA was refused while its IKE_SA stays up: that child is down (when the
        responder found no child for the peer's selectors, every child not up is)."""
        names = [event.child] if event.child is not None else [
            n for n in record.conf.children
            if not any(c.event.child == n for c in self.c.child_sas.children_of(event.ike_sa))]
        for name in names:
            conf = record.conf.children.get(name)
            child_detail = dict(detail)
            if conf is not None and reason is DownReason.TS_UNACCEPTABLE:
                child_detail |= {"local_ts": list(conf.local_ts) or ["(local address)"],
                                 "remote_ts": list(conf.remote_ts) or ["(remote address)"]}
                log.warning("%s/%s: our selectors %s === %s", record.name, name,
                            ",".join(conf.local_ts) or "(local address)",
                            ",".join(conf.remote_ts) or "(remote address)")
            record.child_down[name] = ChildDown(reason, child_detail, self.c.clock())

    def unmatched(self, event: NegotiationFailed) -> None:
        """A failure no loaded connection owns (an IKE_SA_INIT or identity that matches
        none): counted, kept for `status`, logged and sent as an event at most once a
        minute per remote address (a scan must not flood the log)."""
        sa = self.c.manager.get(event.ike_sa) if event.ike_sa else None
        local = event.local or (sa.local if sa is not None else None)
        remote = event.remote or (sa.remote if sa is not None else None)
        info = FailureInfo(self.c.views.wall(self.c.clock()) or datetime.now(UTC),
                           DownReason.of(event.reason.value), event.message,
                           f"{local[0]}:{local[1]}" if local else None,
                           f"{remote[0]}:{remote[1]}" if remote else None)
        self.c.unmatched.append(info)
        now, key = self.c.clock(), remote[0] if remote else ""
        if now - self.c._unmatched_logged.get(key, -UNMATCHED_LOG_INTERVAL) < \
                UNMATCHED_LOG_INTERVAL:
            return
        if len(self.c._unmatched_logged) > 4096:
            self.c._unmatched_logged.clear()
        self.c._unmatched_logged[key] = now
        log.warning("unmatched peer %s -> %s: %s: %s (ours: %s; theirs: %s)", info.remote,
                    info.local, event.reason.value, event.message,
                    "; ".join(event.ours) or "-", "; ".join(event.theirs) or "-")
        self.c.emit("UnmatchedPeer", {"failure": event.reason.value,
                                      "message": f"{event.reason.value} from {info.remote} to "
                                                f"{info.local}: {event.message}",
                                     "local": info.local, "remote": info.remote,
                                     "ours": list(event.ours), "theirs": list(event.theirs)})

    def connection_down(self, record: ConnectionRecord, reason: DownReason) -> None:
        was_up = record.state is ConnectionState.UP
        self.set_state(record, ConnectionState.DOWN, reason)
        if reason in (DownReason.DELETED, DownReason.DAEMON_STOPPED):
            return
        if reason is DownReason.DELETED_BY_PEER:
            self.after_peer_delete(record)
            return
        if was_up and reason is DownReason.PEER_UNREACHABLE:
            self.after_dead_peer(record)
        elif record.wanted:  # not up yet (unreachable, refused ...): keep trying
            asyncio.get_running_loop().call_later(RETRY_DELAY, self.retry, record.name)

    def after_dead_peer(self, record: ConnectionRecord) -> None:
        """An established peer stopped answering (DPD): do what dpd_action says."""
        action = record.conf.dpd_action
        self.come_back(record, restart=action is cf.DpdAction.RESTART,
                        trap=action is cf.DpdAction.TRAP)

    def after_peer_delete(self, record: ConnectionRecord) -> None:
        """The peer closed the IKE SA: do what close_action says (default: stay down)."""
        action = record.conf.close_action
        self.come_back(record, restart=action is cf.CloseAction.START,
                        trap=action is cf.CloseAction.TRAP)

    def come_back(self, record: ConnectionRecord, *, restart: bool, trap: bool) -> None:
        """Re-initiate after a delay, or re-arm the trap policies, or stay down."""
        record.wanted = restart
        if restart:
            asyncio.get_running_loop().call_later(RETRY_DELAY, self.retry, record.name)
        elif trap:
            self.c.installer.queue(lambda: self.c._install_traps(record))

    def retry(self, name: str) -> None:
        record = self.c.connections.get(name)
        if record is not None and record.wanted and record.state is ConnectionState.DOWN:
            self.c._initiate(record)

    def set_state(self, record: ConnectionRecord, state: ConnectionState,
                  reason: DownReason | None) -> None:
        record.state, record.since = state, self.c.clock()
        record.reason = reason
        if state in (ConnectionState.UP, ConnectionState.CONNECTING):
            record.detail = {}

