"""The controller: joins the IKE core and the kernel, and decides.

IKE events -> kernel work (install a CHILD_SA, remove one), in the order they happened,
batched; kernel events (ACQUIRE, EXPIRE soft/hard) -> IKE actions (initiate, rekey,
delete); REST actions -> IKE actions. It implements the API's `Controller` port.

Nothing here blocks the loop: the IKE core is pure computation, the kernel is async
netlink, and every piece of kernel work goes through one ordered queue so a rekeyed
CHILD_SA is always installed before its predecessor is removed.

A rekey loses no packet (make-before-break, as strongSwan does it):
- datagrams that follow kernel work wait for it: a response announcing a CHILD_SA leaves
  once its SAs are in, so the peer never sends on an SA we lack;
- the responder of a CHILD_SA rekey installs the new inbound SA at once but keeps sending
  on the old one until the initiator deletes it (by then the initiator has the new SA
  inbound); the initiator sends on the new SA as soon as it has the response;
- a rekeyed CHILD_SA's inbound SA stays `delete_rekeyed_delay` seconds for packets still
  on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from xfrmctl.ike.config import Mode
from xfrmctl.ike.errors import LocalError
from xfrmctl.ike.events import (
    ChildSaDeleted,
    ChildSaNegotiated,
    Event,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
    PeerMoved,
    ReauthDue,
    VirtualIpAssigned,
)
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.sa import ChildState, Datagram, Endpoint, IkeSa, IkeState
from xfrmctl.kernel.interface import SPI_MAX, SPI_MIN, KernelIPsec
from xfrmctl.kernel.links import KernelLinks
from xfrmctl.kernel.types import (
    REQID_MIN,
    Acquire,
    EventsLost,
    Expire,
    KernelError,
    KernelEvent,
    PolicySpec,
    SaId,
)
from xfrmctl.kernel.types import Mapping as KernelMapping

from . import conf as cf
from . import confdiff
from .install import interface_mtu
from .installer import ChildInstaller, SendAfter
from .pool import AddressPool
from .ports import (
    ActionRejected,
    ChildSaInfo,
    ConfigChange,
    ConfigKind,
    ConnectionState,
    DaemonStatus,
    DownReason,
    FailureInfo,
    IkeSaInfo,
    KernelView,
    PolicyInfo,
    Target,
    UnknownTarget,
)
from .records import (
    ChildDown,
    ChildRecord,
    ChildRecordState,
    ConnectionRecord,
    InstallFailure,
)
from .records import child_id as child_id_of
from .restore import Restorer, read_boot_id
from .routelinks import LinkSpec, RouteLinks, link_spec, wanted_links
from .routes import PolicyRoutes
from .state import StateFile
from .traps import Traps, hold_routes
from .views import Views, event_fields

log = logging.getLogger("xfrmctl.daemon")
VIP_DEVICE = "lo"
NAT_KEEPALIVE_INTERVAL = 20.0  # seconds, as strongSwan's default
RETRY_DELAY = 10.0  # seconds before re-initiating a start/restart connection
STOP_GRACE = 3.0  # seconds to wait for peers to answer our deletes on shutdown
UNMATCHED_KEPT = 32  # failures no connection owns, shown in `status` (newest)
UNMATCHED_LOG_INTERVAL = 60.0  # seconds: one log line and event per remote address
RESYNC_DELAY = 1.0  # seconds before comparing the kernel with our state after a failure
INSTALL_RETRY = 2.0  # seconds before a failed CHILD_SA install is negotiated again


class Controller:
    """The running gateway. `send` is set by the endpoints once they are bound."""

    def __init__(self, conf: cf.DaemonConf, kernel: KernelIPsec, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, state: StateFile | None = None,
                 links: KernelLinks | None = None) -> None:
        self.conf = conf
        self.links = links  # route-based children need it (XFRM interfaces, VTIs)
        self.route_links = RouteLinks(links)
        self._wanted_links: dict[str, LinkSpec] = {}  # by name, as configured
        # policy-based tunnels: routes to the remote selectors (table 220)
        self.routes = PolicyRoutes(links, conf.route_table, conf.route_priority) \
            if links is not None and conf.install_routes else None
        self.state = state  # set: SAs are saved, and a restart keeps the tunnels
        self._dirty = False
        self.kernel = kernel
        # Timers and the IKE core run on `clock` (monotonic: a step of the wall clock
        # moves no deadline); `wall_clock` only dates what is shown and checks certificates.
        self.clock = clock
        self.wall_clock = wall_clock
        self.boot_id: Callable[[], str | None] = read_boot_id
        self.manager = IkeManager(cookie_threshold=conf.cookie_threshold,
                                  spi_allocator=self._random_spi,
                                  limits=conf.limits.to_core())
        self.send: Callable[[Datagram], None] = lambda d: None
        # NAT keepalive sender (RFC 3948 4): set by the endpoints, like `send`.
        self.keepalive: Callable[[Endpoint, Endpoint], None] = lambda local, remote: None
        self.connections: dict[str, ConnectionRecord] = {}
        self.started_at = clock()
        self.counters: dict[str, int] = {"ike_setups": 0, "child_setups": 0, "rekeys": 0,
                                         "kernel_installs": 0}
        self.failures: dict[str, int] = {}
        self.unmatched: deque[FailureInfo] = deque(maxlen=UNMATCHED_KEPT)
        self._unmatched_logged: dict[str, float] = {}  # remote address -> when
        # connections the configuration names but that could not be loaded: name -> why
        self.not_loaded: dict[str, str] = {}
        self.event_listeners: list[Callable[[str, dict[str, object]], None]] = []
        self._reqids: dict[tuple[str, str], int] = {}
        self._outbox: list[Datagram] = []
        self._flushing = False
        # Replacements we asked for: (IKE SA id, child) -> the CHILD_SAs (inbound SPIs) to
        # delete once the new one is installed.
        self._replace_after: dict[tuple[int, str], tuple[int, ...]] = {}
        # Reauthentications under way: the new IKE SA's id -> (old IKE SA's id, the
        # children still to come up on the new one).
        self._reauths: dict[int, tuple[int, set[str]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pools: dict[str, AddressPool] = {}
        self._vips: dict[int, str] = {}  # IKE SA id -> virtual IP we put on VIP_DEVICE
        # Database mode: reads the desired state; config_changed reloads from it.
        self.config_source: Callable[[], Awaitable[cf.DaemonConf]] | None = None
        # and why it left connections out (name -> why)
        self.load_problems: Callable[[], dict[str, str]] | None = None
        self.kernel_kind = "netlink"  # "memory": the in-memory kernel (said in status)
        self._reload_lock = asyncio.Lock()
        self.installer = ChildInstaller(
            kernel, self, clock=clock,
            delete_rekeyed_delay=lambda: self.conf.delete_rekeyed_delay,
            install_retry=INSTALL_RETRY, resync_delay=RESYNC_DELAY)
        self.views = Views(self)
        self.saved = Restorer(self)
        self.traps = Traps(kernel, self.routes, self.reqid)
        self.load(conf)

    # The installer's state, as the daemon's tests and views read it.
    @property
    def children(self) -> dict[int, ChildRecord]:
        return self.installer.children

    @property
    def install_failures(self) -> dict[tuple[str, str], InstallFailure]:
        return self.installer.install_failures

    @property
    def install_seconds(self) -> float:
        return self.installer.install_seconds

    @property
    def _rekeys(self) -> dict[int, list[ChildRecord]]:
        return self.installer.rekeys

    @property
    def _jobs_idle(self) -> asyncio.Event:
        return self.installer.jobs_idle

    @property
    def _lingering(self) -> dict[SaId, asyncio.TimerHandle]:
        return self.installer.lingering

    # ----------------------------------------------------------------- configuration

    def _random_spi(self) -> int:
        return SPI_MIN + secrets.randbelow(SPI_MAX - SPI_MIN)

    def reqid(self, connection: str, child: str) -> int:
        key = (connection, child)
        if key not in self._reqids:
            self._reqids[key] = REQID_MIN + len(self._reqids) + 1
        return self._reqids[key]

    def load(self, conf: cf.DaemonConf) -> list[str]:
        """Take a new configuration; returns the names of connections that changed."""
        self.conf = conf
        changed = []
        for name, conn in sorted(conf.connections.items()):
            old = self.connections.get(name)
            try:  # a psk_file (or key) rewritten in place is a change too
                credentials = cf.credential_digest(conn)
            except OSError as exc:
                self._not_loadable(name, exc)
                continue
            if old is not None and old.conf == conn and old.credentials == credentials:
                continue
            pool = None
            if conn.pool:
                pool = self._pools.setdefault(name, AddressPool(conn.pool))
            try:
                ike = cf.ike_config(name, conn, pool)
            except (OSError, ValueError) as exc:  # e.g. a psk_file or key that is missing
                self._not_loadable(name, exc)
                continue
            self.not_loaded.pop(name, None)
            # The database's id if given; else kept across reloads, new ones numbered on.
            ident = conn.id or (old.id if old else self._next_id())
            record = ConnectionRecord(ident, name, conn, ike, credentials=credentials)
            if old is not None:  # what runs stays: reload() applies the difference
                record.state, record.reason, record.detail = old.state, old.reason, old.detail
                record.since, record.traps = old.since, old.traps
                record.wanted = old.wanted
            self.connections[name] = record
            changed.append(name)
        for name in set(self.connections) - set(conf.connections):
            changed.append(name)
        for name in set(self.not_loaded) - set(conf.connections):
            del self.not_loaded[name]
        self.manager.configs = {r.name: r.ike for r in self.connections.values()
                                if r.name in conf.connections}
        self._wanted_links = wanted_links({r.name: r.conf for r in self.connections.values()
                                           if r.name in conf.connections})
        return changed

    def _not_loadable(self, name: str, exc: Exception) -> None:
        """One connection that cannot be loaded is left out (a running one keeps its
        last good configuration); the others load. `status` says why."""
        why = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename \
            else str(exc)
        if self.not_loaded.get(name) != why:
            log.error("connection %s not loaded: %s", name, why)
        self.not_loaded[name] = why

    def _next_id(self) -> int:
        return max((r.id for r in self.connections.values()), default=0) + 1

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.installer.run(), name="kernel-jobs"),
                       loop.create_task(self._kernel_event_loop(), name="kernel-events"),
                       loop.create_task(self._keepalive_loop(), name="nat-keepalive")]
        if self.state is not None:
            try:
                await self.saved.restore(self.state)
            finally:
                self.installer.ready.set()
            self._tasks.append(loop.create_task(self.saved.writer(self.state),
                                                name="state-writer"))
        self.installer.ready.set()
        await self._sync_links(adopt=True)
        for record in self.connections.values():
            if not self._sas_of(record):
                await self._apply_start_action(record)

    async def stop(self, keep_tunnels: bool | None = None) -> None:
        """Delete our SAs (telling peers) and remove what we installed; or, when the state
        is saved (the default with a state file), leave the tunnels to the kernel and save
        what the next process needs to take them back."""
        keep = self.state is not None if keep_tunnels is None else keep_tunnels
        if keep and self.state is not None:
            await self.drain()
            await self.installer.complete_pending()  # the saved CHILD_SAs are whole
            self.state.save(self._snapshot())
            await self._cancel_tasks()  # lingering SAs: the next process's orphans
            return
        now = self.clock()
        for sa in self.manager.all():
            self.manager.act(sa, lambda s: s.delete(now, "daemon stopped"))
        self._flush()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + STOP_GRACE
        while self.manager.all() and loop.time() < give_up:
            await asyncio.sleep(0.05)  # let the peers answer our deletes
        await self.drain()
        await self.installer.remove_all()
        for record in self.connections.values():
            await self.traps.remove(record)
        await self.route_links.close()
        if self.routes is not None:
            await self.routes.close()
        if self.state is not None:
            self.state.clear()
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.installer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> None:
        """Wait until every queued kernel job ran (tests and shutdown)."""
        await self.installer.drain()

    async def _apply_start_action(self, record: ConnectionRecord) -> None:
        if record.conf.start_action is cf.StartAction.START:
            record.wanted = True
            self._initiate(record)
        elif record.conf.start_action is cf.StartAction.TRAP:
            await self._install_traps(record)

    # ----------------------------------------------------------------- datagrams

    def receive(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        now = self.clock()
        self.manager.wall_offset = self.wall_clock() - now
        self.manager.receive_datagram(data, local, remote, now)
        self._flush()

    def _flush(self) -> None:
        """Send what the IKE core wrote and act on its events. Datagrams go out after
        the kernel work those events queued (a flush inside one adds to the outer's)."""
        self._outbox.extend(self.manager.datagrams_to_send())
        if self._flushing:
            return
        self._flushing, queued = True, self.installer.queued
        try:
            while (event := self.manager.next_event()) is not None:
                self._on_event(event)
                self._outbox.extend(self.manager.datagrams_to_send())
        finally:
            self._flushing = False
        datagrams, self._outbox = tuple(self._outbox), []
        if datagrams and self.installer.queued != queued:
            self.installer.queue(SendAfter(datagrams))
        else:
            for datagram in datagrams:
                self.send(datagram)
        self._dirty = True
        self._schedule_timer()

    # ----------------------------------------------------------------- timers

    def _schedule_timer(self) -> None:
        """One loop timer for the earliest deadline of every IKE SA (the manager's heap)."""
        deadline = self.manager.get_timer()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_deadline = None, deadline
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, deadline - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_deadline = None
        self.manager.handle_timer(self.clock())
        self._flush()

    # ----------------------------------------------------------------- IKE events

    def _on_event(self, event: Event) -> None:
        handler = _EVENT_HANDLERS.get(type(event))
        if isinstance(event, NegotiationFailed) and event.connection not in self.connections:
            self._on_failed(event)  # a stranger's: reported as UnmatchedPeer, rate-limited
            return
        if self.event_listeners or log.isEnabledFor(logging.INFO):
            self.emit(type(event).__name__, event_fields(event))
        if handler is not None:
            handler(self, event)

    def emit(self, kind: str, fields: dict[str, object]) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()),
                     extra={"event": kind, "fields": fields})
        for listener in self.event_listeners:
            listener(kind, fields)

    def _on_ike_up(self, event: IkeSaUp) -> None:
        self.counters["ike_setups"] += 1
        record = self.connections.get(event.connection)
        if record is not None:
            self._set_state(record, ConnectionState.UP, None)

    def _on_ike_rekeyed(self, event: IkeSaRekeyed) -> None:
        self.counters["rekeys"] += 1
        for child in self.children.values():  # the CHILD_SAs moved to the new IKE SA
            if child.event.ike_sa == event.ike_sa:
                child.event = replace(child.event, ike_sa=event.new_ike_sa)
        if event.ike_sa in self._vips:
            self._vips[event.new_ike_sa] = self._vips.pop(event.ike_sa)

    def _on_ike_down(self, event: IkeSaDown) -> None:
        self._reauth_failed(event.ike_sa)
        vip = self._vips.pop(event.ike_sa, None)
        if vip is not None and event.reason != "rekeyed":
            self.installer.queue(lambda: self._vip_address(vip, add=False))
        record = self.connections.get(event.connection)
        if record is None or any(sa.name == record.name and sa.state is not IkeState.CLOSED
                                 for sa in self.manager.all()):
            return
        if event.reason == "rekeyed":
            return
        self.installer.forget_lingering(record.name)  # no IKE SA left: nothing more in flight
        reason = DownReason.of(event.reason)
        if reason is DownReason.OTHER or not record.detail:
            record.detail = {"message": event.reason}
        self._connection_down(record, reason)

    def _on_failed(self, event: NegotiationFailed) -> None:
        self.failures[event.reason.value] = self.failures.get(event.reason.value, 0) + 1
        if event.ike_sa in self._reauths:  # the old IKE SA stays meanwhile
            log.warning("reauthentication of %s failed: %s: %s", event.connection,
                        event.reason.value, event.message)
            if event.child is not None:
                self._reauth_child_done(event.ike_sa, event.child)
            else:
                self._reauth_failed(event.ike_sa)
            return
        record = self.connections.get(event.connection)
        if record is None:
            self._unmatched(event)
            return
        what = f"{event.connection}/{event.child}" if event.child else event.connection
        log.warning("negotiation failed: %s: %s: %s (ours: %s; theirs: %s)", what,
                    event.reason.value, event.message, "; ".join(event.ours) or "-",
                    "; ".join(event.theirs) or "-")
        reason = DownReason.of(event.reason.value)
        detail: dict[str, object] = {"message": event.message, "ours": list(event.ours),
                                     "theirs": list(event.theirs)}
        sa = self.manager.get(event.ike_sa)
        if event.child is not None or (sa is not None and sa.state is IkeState.ESTABLISHED):
            self._children_refused(record, event, reason, detail)
            return
        if any(sa.id != event.ike_sa and sa.state is IkeState.ESTABLISHED
               for sa in self._sas_of(record)):
            return  # another attempt (e.g. a stranger's) failed; the tunnel is up
        record.detail = detail
        self._connection_down(record, reason)

    def _children_refused(self, record: ConnectionRecord, event: NegotiationFailed,
                          reason: DownReason, detail: dict[str, object]) -> None:
        """A CHILD_SA was refused while its IKE_SA stays up: that child is down (when the
        responder found no child for the peer's selectors, every child not up is)."""
        names = [event.child] if event.child is not None else [
            n for n in record.conf.children
            if not any(c.event.child == n for c in self._children_of(event.ike_sa))]
        for name in names:
            conf = record.conf.children.get(name)
            child_detail = dict(detail)
            if conf is not None and reason is DownReason.TS_UNACCEPTABLE:
                child_detail |= {"local_ts": list(conf.local_ts) or ["(local address)"],
                                 "remote_ts": list(conf.remote_ts) or ["(remote address)"]}
                log.warning("%s/%s: our selectors %s === %s", record.name, name,
                            ",".join(conf.local_ts) or "(local address)",
                            ",".join(conf.remote_ts) or "(remote address)")
            record.child_down[name] = ChildDown(reason, child_detail, self.clock())

    def _unmatched(self, event: NegotiationFailed) -> None:
        """A failure no loaded connection owns (an IKE_SA_INIT or identity that matches
        none): counted, kept for `status`, logged and sent as an event at most once a
        minute per remote address (a scan must not flood the log)."""
        sa = self.manager.get(event.ike_sa) if event.ike_sa else None
        local = event.local or (sa.local if sa is not None else None)
        remote = event.remote or (sa.remote if sa is not None else None)
        info = FailureInfo(self.views.wall(self.clock()) or datetime.now(UTC),
                           DownReason.of(event.reason.value), event.message,
                           f"{local[0]}:{local[1]}" if local else None,
                           f"{remote[0]}:{remote[1]}" if remote else None)
        self.unmatched.append(info)
        now, key = self.clock(), remote[0] if remote else ""
        if now - self._unmatched_logged.get(key, -UNMATCHED_LOG_INTERVAL) < \
                UNMATCHED_LOG_INTERVAL:
            return
        if len(self._unmatched_logged) > 4096:
            self._unmatched_logged.clear()
        self._unmatched_logged[key] = now
        log.warning("unmatched peer %s -> %s: %s: %s (ours: %s; theirs: %s)", info.remote,
                    info.local, event.reason.value, event.message,
                    "; ".join(event.ours) or "-", "; ".join(event.theirs) or "-")
        self.emit("UnmatchedPeer", {"failure": event.reason.value,
                                     "message": f"{event.reason.value} from {info.remote} to "
                                                f"{info.local}: {event.message}",
                                     "local": info.local, "remote": info.remote,
                                     "ours": list(event.ours), "theirs": list(event.theirs)})

    def _connection_down(self, record: ConnectionRecord, reason: DownReason) -> None:
        was_up = record.state is ConnectionState.UP
        self._set_state(record, ConnectionState.DOWN, reason)
        if reason in (DownReason.DELETED, DownReason.DAEMON_STOPPED):
            return
        if reason is DownReason.DELETED_BY_PEER:
            self._after_peer_delete(record)
            return
        if was_up and reason is DownReason.PEER_UNREACHABLE:
            self._after_dead_peer(record)
        elif record.wanted:  # not up yet (unreachable, refused ...): keep trying
            asyncio.get_running_loop().call_later(RETRY_DELAY, self._retry, record.name)

    def _after_dead_peer(self, record: ConnectionRecord) -> None:
        """An established peer stopped answering (DPD): do what dpd_action says."""
        action = record.conf.dpd_action
        self._come_back(record, restart=action is cf.DpdAction.RESTART,
                        trap=action is cf.DpdAction.TRAP)

    def _after_peer_delete(self, record: ConnectionRecord) -> None:
        """The peer closed the IKE SA: do what close_action says (default: stay down)."""
        action = record.conf.close_action
        self._come_back(record, restart=action is cf.CloseAction.START,
                        trap=action is cf.CloseAction.TRAP)

    def _come_back(self, record: ConnectionRecord, *, restart: bool, trap: bool) -> None:
        """Re-initiate after a delay, or re-arm the trap policies, or stay down."""
        record.wanted = restart
        if restart:
            asyncio.get_running_loop().call_later(RETRY_DELAY, self._retry, record.name)
        elif trap:
            self.installer.queue(lambda: self._install_traps(record))

    def _retry(self, name: str) -> None:
        record = self.connections.get(name)
        if record is not None and record.wanted and record.state is ConnectionState.DOWN:
            self._initiate(record)

    def _set_state(self, record: ConnectionRecord, state: ConnectionState,
                   reason: DownReason | None) -> None:
        record.state, record.since = state, self.clock()
        record.reason = reason
        if state in (ConnectionState.UP, ConnectionState.CONNECTING):
            record.detail = {}

    def _on_child(self, event: ChildSaNegotiated) -> None:
        self.counters["child_setups"] += 1
        record = self.connections.get(event.connection)
        child_conf = record.conf.children.get(event.child) if record else None
        if child_conf is None:  # removed from the configuration while it was negotiated
            log.warning("CHILD_SA %s/%s is no longer configured: deleting it",
                        event.connection, event.child)
            self._delete_with_peer(event, "not configured")
            return
        assert record is not None
        record.child_down.pop(event.child, None)
        self.installer.add(event, child_conf, self.reqid(event.connection, event.child),
                           link_spec(record.conf, child_conf))
        self._reauth_child_done(event.ike_sa, event.child)
        replaces = self._replace_after.pop((event.ike_sa, event.child), ())
        if replaces and event.rekey_of is None:
            self.installer.queue(lambda: self._delete_replaced(event.ike_sa, replaces))
        if child_conf.interface_name and child_conf.mtu is None:
            name, mtu = child_conf.interface_name, interface_mtu(event)
            self.installer.queue(lambda: self._set_mtu(name, mtu))

    def _delete_replaced(self, ike_sa: int, spis: Sequence[int]) -> None:
        """The replacing CHILD_SA is installed: delete the ones it replaces."""
        sa = self.manager.get(ike_sa)
        if sa is None or sa.state is not IkeState.ESTABLISHED:
            return
        now = self.clock()
        for spi in spis:
            if spi in self.children:
                with contextlib.suppress(LocalError):
                    self.manager.act(sa, lambda s, spi=spi: s.delete_child(  # type: ignore[misc]
                        spi, now, "replaced"))
        self._flush()

    def _delete_with_peer(self, event: ChildSaNegotiated, reason: str) -> None:
        """Delete a CHILD_SA we will not keep, telling the peer (INFORMATIONAL)."""
        sa = self.manager.get(event.ike_sa)
        if sa is not None and sa.state is IkeState.ESTABLISHED:
            now, spi_in = self.clock(), event.spi_in
            with contextlib.suppress(LocalError):  # the peer may have deleted it meanwhile
                self.manager.act(sa, lambda s: s.delete_child(spi_in, now, reason))
            self._flush()

    def _on_child_deleted(self, event: ChildSaDeleted) -> None:
        self.installer.deleted(event.spi_in)
        record = self.connections.get(event.connection)
        if record is not None and not any(
                c.event.ike_sa == event.ike_sa and c.event.child == event.child
                for c in self._children_of(event.ike_sa)):
            reason = DownReason.of(event.reason)
            known = record.child_down.get(event.child)
            if known is None or known.reason is not reason:  # else keep what it knows
                detail: dict[str, object] = {"message": event.reason}
                record.child_down[event.child] = ChildDown(reason, detail, self.clock())

    def _children_of(self, ike_sa: int) -> list[ChildRecord]:
        """The CHILD_SAs of one IKE_SA (the IKE core's list, so no scan of every child)."""
        sa = self.manager.get(ike_sa)
        spis = [c.spi_in for c in sa.children.values()] if sa is not None else []
        return [self.children[spi] for spi in spis if spi in self.children]

    def _on_vip(self, event: VirtualIpAssigned) -> None:
        log.info("virtual IP %s %s for %s", event.address,
                 "assigned" if event.to_peer else "received", event.connection)
        if not event.to_peer and self.links is not None:
            # A client uses its virtual IP as the source of tunnelled traffic: put it on
            # the loopback device while the IKE SA lives.
            address = f"{event.address}/{32 if ':' not in event.address else 128}"
            self._vips[event.ike_sa] = address
            self.installer.queue(lambda: self._vip_address(address, add=True))

    async def _vip_address(self, address: str, add: bool) -> None:
        assert self.links is not None
        try:
            if add:
                await self.links.add_address(VIP_DEVICE, address)
            else:
                await self.links.delete_address(VIP_DEVICE, address)
        except KernelError as exc:
            log.warning("virtual IP %s on %s: %s", address, VIP_DEVICE, exc)

    # ----------------------------------------------------------------- installer host

    def child_state(self, ike_sa: int, spi_in: int) -> ChildState | None:
        sa = self.manager.get(ike_sa)
        return sa.child_state(spi_in) if sa is not None else None

    def install_failed(self, child: ChildRecord, reason: str, delay: float) -> None:
        event = child.event
        record = self.connections.get(event.connection)
        if record is not None:
            record.child_down[event.child] = ChildDown(
                DownReason.KERNEL_INSTALL_FAILED, {"message": reason}, self.clock())
        self._delete_with_peer(event, DownReason.KERNEL_INSTALL_FAILED.value)
        asyncio.get_running_loop().call_later(delay, self._retry_install, event)

    def lost(self, child: ChildRecord) -> None:
        sa = self.manager.get(child.event.ike_sa)
        if sa is not None and sa.state is IkeState.ESTABLISHED:
            record = self.connections.get(child.event.connection)
            configured = record is not None and child.event.child in record.conf.children
            with contextlib.suppress(LocalError, ValueError, KeyError):
                self._replace_lost_child(sa, child.event, configured, self.clock())
            self._flush()

    def soft_expired(self, child: ChildRecord) -> None:
        self._on_expire(Expire(child.install.inbound.id, False, child.reqid))

    def trap_policies(self) -> list[PolicySpec]:
        return [p for record in self.connections.values() for p in record.traps]

    async def in_kernel(self, child: ChildRecord) -> None:
        await self._hold_child_routes(child)

    async def leaving(self, child: ChildRecord) -> None:
        if child.link is not None:  # its interface goes before it, if nothing else uses it
            await self._sync_links()

    async def left(self, child: ChildRecord) -> None:
        if self.routes is not None:
            await self.routes.release(child.event.spi_in)

    def _retry_install(self, failed: ChildSaNegotiated) -> None:
        """Negotiate a child again whose install failed: rekey its predecessor if that
        still lives, else create it on its IKE SA unless one of its name is there."""
        sa = self.manager.get(failed.ike_sa)
        if sa is None or sa.state is not IkeState.ESTABLISHED:
            return  # the connection's own retry (start action, DPD, close action) rules
        now, name, old = self.clock(), failed.child, failed.rekey_of
        if old is None or old not in self.children:
            if any(c.event.ike_sa == sa.id and c.event.child == name
                   for c in self.children.values()):
                return  # a CHILD_SA of that name is up (or coming) again
            old = None
        with contextlib.suppress(LocalError, ValueError, KeyError):
            if old is not None:
                self.manager.act(sa, lambda s: s.rekey_child(old, now))
            else:
                self.manager.act(sa, lambda s: s.create_child(name, now))
        self._flush()

    async def _hold_child_routes(self, child: ChildRecord) -> None:
        event = child.event
        record = self.connections.get(event.connection)
        conf = record.conf.children.get(event.child) if record else None
        if conf is None or conf.interface_kind is not None or event.mode is not Mode.TUNNEL:
            return  # route-based (its interface has the routes) or transport
        vip = self._vips.get(event.ike_sa)
        await hold_routes(self.routes, event.spi_in, event.local_ts, event.remote_ts,
                          event.remote[0], vip.split("/")[0] if vip else None)

    async def _install_traps(self, record: ConnectionRecord) -> None:
        if await self.traps.install(record) and record.state is ConnectionState.DOWN:
            self._set_state(record, ConnectionState.TRAPPED, None)

    async def _keepalive_loop(self) -> None:
        """Behind a NAT, keep its UDP mapping open for the peer (one 0xFF octet on 4500)."""
        while True:
            await asyncio.sleep(NAT_KEEPALIVE_INTERVAL)
            for sa in self.manager.all():
                if sa.nat_local and sa.state is IkeState.ESTABLISHED:
                    self.keepalive(sa.local, sa.remote)

    # ----------------------------------------------------------------- route-based links

    async def _sync_links(self, *, adopt: bool = False) -> None:
        """Links to the configuration, make-before-break (see routelinks.py): those in use
        by a CHILD_SA in the kernel stay until it goes."""
        in_use = {c.link for c in self.installer.installed.values() if c.link is not None}
        await self.route_links.sync(self._wanted_links, in_use, adopt=adopt)

    async def _set_mtu(self, name: str, mtu: int) -> None:
        if self.links is not None:
            try:
                await self.links.set_mtu(name, mtu)
            except KernelError as exc:
                log.warning("MTU %d on %s: %s", mtu, name, exc)

    # ----------------------------------------------------------------- kernel events

    async def _kernel_event_loop(self) -> None:
        async for event in self.kernel.events():
            try:
                self._on_kernel_event(event)
            except Exception:
                log.exception("kernel event %s", event)

    def _on_kernel_event(self, event: KernelEvent) -> None:
        if isinstance(event, EventsLost):  # the monitor socket overran (ENOBUFS)
            log.warning("kernel events were lost (%s): resynchronising with the kernel",
                        errno.errorcode.get(event.errno, event.errno))
            self.installer.schedule_resync("kernel events lost", 0.0)
        elif isinstance(event, Expire):
            self._on_expire(event)
        elif isinstance(event, Acquire):
            self._on_acquire(event)
        elif isinstance(event, KernelMapping):
            self._on_mapping(event)

    def _on_mapping(self, event: KernelMapping) -> None:
        """ESP-in-UDP from the peer arrived from a new address or port (its NAT rebound):
        the IKE SA follows when the peer is behind a NAT and we are not."""
        child = self.children.get(event.sa.spi)
        sa = self.manager.get(child.event.ike_sa) if child is not None else None
        if sa is None:
            return
        moved = (str(event.new_src), event.new_sport)
        if moved != sa.remote:
            self.manager.act(sa, lambda s: s.peer_moved(moved))
            self._flush()

    def _on_peer_moved(self, event: PeerMoved) -> None:
        for child in [c for c in self.children.values() if c.event.ike_sa == event.ike_sa]:
            self.installer.queue(functools.partial(self._move_child, child, event.new))

    async def _move_child(self, child: ChildRecord, remote: Endpoint) -> None:
        """Re-address a CHILD_SA's SAs and policies to the peer's new endpoint."""
        record = self.connections.get(child.event.connection)
        conf = record.conf.children.get(child.event.child) if record else None
        if conf is not None:
            await self.installer.move(child, remote, conf)

    def _on_expire(self, event: Expire) -> None:
        child = self.installer.by_sa(event.sa.spi)
        if child is None:
            return
        sa = self.manager.get(child.event.ike_sa)
        if sa is None:
            return
        now = self.clock()
        spi_in = child.event.spi_in
        if event.hard:
            self.manager.act(sa, lambda s: s.delete_child(spi_in, now, "hard expire"))
        elif sa.child_state(spi_in) is ChildState.INSTALLED:  # once per CHILD_SA
            with contextlib.suppress(LocalError):
                self.manager.act(sa, lambda s: s.rekey_child(spi_in, now))
        self._flush()

    def _on_acquire(self, event: Acquire) -> None:
        record = self.traps.owner_of(list(self.connections.values()), event.reqid)
        if record is not None and record.state in (ConnectionState.TRAPPED,
                                                   ConnectionState.DOWN):
            self._initiate(record)

    # ----------------------------------------------------------------- actions

    def _initiate(self, record: ConnectionRecord, children: Sequence[str] | None = None) -> None:
        conf = record.conf
        if not conf.remote_addrs:
            raise ActionRejected(f"connection {record.name} has no remote address")
        remote_addr = conf.remote_addrs[0]
        local_addr = conf.local_addrs[0] if conf.local_addrs else self._source_for(remote_addr)
        self._set_state(record, ConnectionState.CONNECTING, None)
        for name in children or list(record.child_down):
            record.child_down.pop(name, None)  # a new attempt: its result will tell
        self.manager.initiate(record.name, (local_addr, conf.local_port),
                              (remote_addr, conf.remote_port), self.clock(), children)
        self._flush()

    def _source_for(self, remote: str) -> str:
        listen = [a for a in self.conf.listen
                  if ipaddress.ip_address(a).version == ipaddress.ip_address(remote).version]
        if not listen:
            raise ActionRejected(f"no local address to reach {remote}: set local_addrs")
        return listen[0]

    def _record(self, connection_id: int) -> ConnectionRecord:
        for record in self.connections.values():
            if record.id == connection_id:
                return record
        raise UnknownTarget(f"connection {connection_id}")

    def sas_of(self, record: ConnectionRecord) -> list[IkeSa]:
        return [sa for sa in self.manager.all() if sa.name == record.name]

    _sas_of = sas_of

    def _ike_sa(self, sa_id: str) -> IkeSa:
        sa = self.manager.get(int(sa_id)) if sa_id.isdigit() else None
        if sa is None:
            raise UnknownTarget(f"IKE_SA {sa_id}")
        return sa

    async def initiate(self, connection_id: int, child_id: int | None = None) -> None:
        record = self._record(connection_id)
        children = None
        if child_id is not None:
            names = [n for n in record.conf.children if child_id_of(record, n) == child_id]
            if not names:
                raise UnknownTarget(f"child {child_id} of connection {connection_id}")
            children = names
        record.wanted = True
        self._initiate(record, children)

    async def terminate(self, target: Target) -> None:
        now = self.clock()
        if target.kind == "connection":
            record = self._record(int(target.id))
            record.wanted = False
            for sa in self._sas_of(record):
                self.manager.act(sa, lambda s: s.delete(now))
        elif target.kind == "ike_sa":
            sa = self._ike_sa(target.id)
            self.manager.act(sa, lambda s: s.delete(now))
        else:
            child = self._child_target(target.id)
            sa = self._ike_sa(str(child.event.ike_sa))
            self.manager.act(sa, lambda s: s.delete_child(child.event.spi_in, now))
        self._flush()

    async def rekey(self, target: Target) -> None:
        now = self.clock()
        if target.kind == "connection":
            sas = self._sas_of(self._record(int(target.id)))
            if not sas:
                raise ActionRejected("connection is not up")
            for sa in sas:
                self.manager.act(sa, lambda s: s.rekey(now))
        elif target.kind == "ike_sa":
            self.manager.act(self._ike_sa(target.id), lambda s: s.rekey(now))
        else:
            child = self._child_target(target.id)
            sa = self._ike_sa(str(child.event.ike_sa))
            try:
                self.manager.act(sa, lambda s: s.rekey_child(child.event.spi_in, now))
            except Exception as exc:
                raise ActionRejected(str(exc)) from exc
        self._flush()

    def _child_target(self, child_id: str) -> ChildRecord:
        for child in self.children.values():
            if str(child.event.child_id) == child_id or f"{child.event.spi_in:08x}" == child_id:
                return child
        raise UnknownTarget(f"CHILD_SA {child_id}")

    async def config_changed(self, kind: ConfigKind, object_id: int,
                             change: ConfigChange) -> None:
        """The file-backed daemon reloads on SIGHUP; the database-backed one re-reads its
        desired state here (serialized, so the last change always wins)."""
        if self.config_source is None:
            raise ActionRejected("this daemon is configured from a file: edit it and send SIGHUP")
        async with self._reload_lock:
            changed = await self.reload(await self.config_source())
        log.info("%s %s %s: reloaded %s", kind, object_id, change, ", ".join(changed) or "-")

    async def reload(self, conf: cf.DaemonConf) -> list[str]:
        """Apply a new configuration, doing the least that reaches it (see confdiff.py):
        running SAs of a changed connection are changed make-before-break, never torn
        down and set up again."""
        before = {name: r.conf for name, r in self.connections.items()}
        credentials = {name: r.credentials for name, r in self.connections.items()}
        changed = self.load(conf)
        await self._sync_links()  # new interfaces before any CHILD_SA moves onto them
        for name in changed:
            record = self.connections[name]
            diff = confdiff.diff_connection(
                name, before.get(name), conf.connections.get(name),
                credentials_changed=name in credentials
                and credentials[name] != record.credentials)
            if diff.removed:
                await self._drop_connection(record)
                self.connections.pop(name, None)
                continue
            log.info("%s: %s", name, _describe(diff))
            live = [sa for sa in self._sas_of(record) if sa.state is IkeState.ESTABLISHED]
            if diff.added or not live:
                await self._restart_connection(record, fresh=diff.added)
                continue
            if await self.traps.update(record, before[name]) and \
                    record.state is ConnectionState.DOWN:
                self._set_state(record, ConnectionState.TRAPPED, None)
            if diff.reauth:
                for sa in live:
                    sa.config = record.ike  # what rekeys it until the new one is up
                    if self._drives(sa, record):
                        self._reauthenticate(sa, record)
            elif diff.negotiates:
                for sa in live:
                    self._apply_children(sa, record)
                    if diff.ike_rekey and self._drives(sa, record):  # the CHILD_SAs move
                        self.manager.act(sa, functools.partial(IkeSa.rekey, now=self.clock()))
            else:
                for sa in live:
                    sa.config = record.ike  # local settings: the next rekey reads them
        self._flush()
        return changed

    async def _drop_connection(self, record: ConnectionRecord) -> None:
        now = self.clock()
        record.wanted = False
        await self.traps.remove(record)
        for sa in self._sas_of(record):
            self.manager.act(sa, lambda s: s.delete(now, "connection removed"))
        self.installer.forget_lingering(record.name)

    async def _restart_connection(self, record: ConnectionRecord, fresh: bool) -> None:
        """A new connection, or one with no IKE SA up: (re)start it as configured."""
        if not fresh:
            now = self.clock()
            for sa in self._sas_of(record):  # half-open with the old settings
                self.manager.act(sa, lambda s: s.delete(now, "configuration changed"))
            await self.traps.remove(record)
        wanted = record.wanted
        await self._apply_start_action(record)
        if wanted and not record.wanted and record.conf.remote_addrs:
            record.wanted = True  # brought up by the API: keep it up
            self._initiate(record)

    def _apply_children(self, sa: IkeSa, record: ConnectionRecord) -> None:
        """Bring the CHILD_SAs of a running IKE SA to the configured children: create the
        new, delete the removed, replace the changed (new first, then the old deleted)."""
        sa.config = record.ike
        now = self.clock()
        running: dict[str, list[ChildRecord]] = {}
        for child in self.children.values():
            if child.event.ike_sa == sa.id and child.state != ChildRecordState.DELETED:
                running.setdefault(child.event.child, []).append(child)
        for name, children in running.items():
            conf = record.conf.children.get(name)
            for child in children:
                if conf is None:
                    spi = child.event.spi_in
                    self.manager.act(sa, lambda s, spi=spi: s.delete_child(  # type: ignore[misc]
                        spi, now, "removed from the configuration"))
            stale = [c for c in children if conf is not None and c.conf is not None
                     and confdiff.diff_child(c.conf, conf)]
            if conf is None or not stale or not self._drives(sa, record, conf):
                continue
            if all(self._rekey_with(sa, c, record, now) for c in stale):
                continue
            self._replace_after[(sa.id, name)] = tuple(c.event.spi_in for c in stale)
            self.manager.act(sa, lambda s, name=name: s.create_child(  # type: ignore[misc]
                name, now))
        for name, conf in record.conf.children.items():
            if name not in running and self._drives(sa, record, conf):
                self.manager.act(sa, lambda s, name=name: s.create_child(  # type: ignore[misc]
                    name, now))

    def _rekey_with(self, sa: IkeSa, child: ChildRecord, record: ConnectionRecord,
                    now: float) -> bool:
        """Replace a CHILD_SA by rekeying it with its child's new configuration: both ends
        then keep sending on the old one until it is deleted (make-before-break even with
        a peer that installs a new CHILD_SA's outbound SA at once). Not for a change of
        mode or protocol, which a rekey cannot carry."""
        old, new = child.conf, record.conf.children[child.event.child]
        assert old is not None
        if (old.mode, bool(old.ah_proposals)) != (new.mode, bool(new.ah_proposals)):
            return False
        spi, config = child.event.spi_in, record.ike.child(child.event.child)
        try:
            self.manager.act(sa, lambda s: s.rekey_child(spi, now, config))
        except LocalError:
            return False  # being rekeyed or deleted right now
        child.state = ChildRecordState.REKEYING
        return True

    @staticmethod
    def _drives(sa: IkeSa, record: ConnectionRecord, child: cf.ChildConf | None = None
                ) -> bool:
        """Whether this end brings a change to a running IKE SA: its original initiator,
        or an end that starts the child itself. A passive responder leaves it to the peer
        (both ends changed alike would otherwise both act)."""
        start = (child.start_action if child else None) or record.conf.start_action
        return sa.is_initiator or record.wanted or start is not cf.StartAction.NONE

    # ----------------------------------------------------------------- reauthentication

    def _reauthenticate(self, sa: IkeSa, record: ConnectionRecord) -> None:
        """RFC 7296 2.8.3, make-before-break: a new IKE SA with the children of the old
        one (as configured now) comes up; then the old one is deleted."""
        if any(old == sa.id for old, _ in self._reauths.values()):
            return  # already under way
        names = sorted({c.event.child for c in self.children.values()
                        if c.event.ike_sa == sa.id} & set(record.conf.children))
        names += [n for n, c in record.conf.children.items()
                  if n not in names and self._drives(sa, record, c)]
        if not names:
            names = list(record.conf.children)
        try:
            new = self.manager.initiate(record.name, sa.local, sa.remote, self.clock(),
                                        names, reauth=True)
        except LocalError as exc:
            log.error("reauthenticating %s: %s", record.name, exc)
            return
        log.info("reauthenticating IKE SA %d of %s as %d (make-before-break)", sa.id,
                 record.name, new.id)
        self._reauths[new.id] = (sa.id, set(names))

    def _on_reauth_due(self, event: ReauthDue) -> None:
        """reauth_time reached: reauthenticate, make-before-break. A responder cannot do
        it for a remote-access client (it holds a virtual IP from us): that IKE SA ends at
        its hard lifetime unless the client reauthenticates (as strongSwan)."""
        sa, record = self.manager.get(event.ike_sa), self.connections.get(event.connection)
        if sa is None or record is None or sa.state is not IkeState.ESTABLISHED:
            return
        if any(other.established_at is not None and sa.established_at is not None
               and other.established_at > sa.established_at
               and other.state is IkeState.ESTABLISHED and other.remote == sa.remote
               and other.id not in self._reauths for other in self._sas_of(record)):
            return  # the peer reauthenticated it already: it deletes this one
        if not sa.is_initiator and sa.virtual_ip is not None:
            log.warning("IKE SA %d of %s: the client did not reauthenticate; it expires at "
                        "its hard lifetime (over_time)", sa.id, record.name)
            return
        self._reauthenticate(sa, record)

    def _reauth_child_done(self, ike_sa: int, child: str) -> None:
        """A child came up (or failed) on a reauthentication's new IKE SA; when none is
        left, the old IKE SA goes, after the kernel work queued so far."""
        entry = self._reauths.get(ike_sa)
        if entry is None:
            return
        entry[1].discard(child)
        if not entry[1]:
            del self._reauths[ike_sa]
            self.installer.queue(functools.partial(self._finish_reauth, entry[0], ike_sa))

    def _finish_reauth(self, old_id: int, new_id: int) -> None:
        old, new = self.manager.get(old_id), self.manager.get(new_id)
        if old is None or new is None or new.state is not IkeState.ESTABLISHED:
            return
        log.info("IKE SA %d of %s reauthenticated as %d: deleting the old one", old_id,
                 old.name, new_id)
        now = self.clock()
        self.manager.act(old, lambda s: s.delete(now, "reauthenticated"))
        self._flush()

    def _reauth_failed(self, ike_sa: int) -> None:
        entry = self._reauths.pop(ike_sa, None)
        if entry is not None:
            log.warning("reauthentication of IKE SA %d failed: keeping it", entry[0])

    # ----------------------------------------------------------------- saved state

    def _snapshot(self) -> dict[str, object]:
        return self.saved.snapshot()

    def _replace_lost_child(self, sa: IkeSa, event: ChildSaNegotiated, still_configured: bool,
                            now: float) -> None:
        """A CHILD_SA gone from the kernel (or from the configuration): delete it with the
        peer, and negotiate a new one if it is still configured."""
        spi_in, name = event.spi_in, event.child
        self.manager.act(sa, lambda s: s.delete_child(spi_in, now, "lost in restart"))
        if still_configured:
            self.manager.act(sa, lambda s: s.create_child(name, now))

    # ----------------------------------------------------------------- read-only views

    async def list_ike_sas(self) -> Sequence[IkeSaInfo]:
        return await self.views.list_ike_sas()

    def ike_sa_info(self, sa_id: int) -> IkeSaInfo | None:
        return self.views.ike_sa_info(sa_id)

    def child_sa_info(self, spi_in: int) -> ChildSaInfo | None:
        """One CHILD_SA without kernel counters (cheap, for the recorder)."""
        return self.views.child_sa_info(spi_in)

    async def list_child_sas(self) -> Sequence[ChildSaInfo]:
        return await self.views.list_child_sas()

    async def list_policies(self) -> Sequence[PolicyInfo]:
        return await self.views.list_policies()

    async def kernel_view(self) -> KernelView:
        return await self.views.kernel_view()

    async def status(self) -> DaemonStatus:
        return await self.views.status()


def _describe(diff: confdiff.ConnectionDiff) -> str:
    if diff.added:
        return "added"
    parts = ["reauthenticating" if diff.reauth else "rekeying the IKE SA"
             if diff.ike_rekey else ""]
    if diff.credentials_changed:
        parts.append("new credential file content")
    for what, names in (("new", diff.children_added), ("removed", diff.children_removed),
                        ("replaced", diff.children_replaced),
                        ("new interfaces for", diff.links_changed)):
        if names and not diff.reauth:
            parts.append(f"{what} children {', '.join(names)}")
    if diff.local_fields:
        parts.append(f"local settings {', '.join(diff.local_fields)}")
    return "; ".join(p for p in parts if p) or "nothing to negotiate"


_Handler = Callable[[Controller, Any], None]  # each takes its own event type
_EVENT_HANDLERS: dict[type, _Handler] = {
    IkeSaUp: Controller._on_ike_up,
    IkeSaRekeyed: Controller._on_ike_rekeyed,
    IkeSaDown: Controller._on_ike_down,
    NegotiationFailed: Controller._on_failed,
    ChildSaNegotiated: Controller._on_child,
    ChildSaDeleted: Controller._on_child_deleted,
    VirtualIpAssigned: Controller._on_vip,
    PeerMoved: Controller._on_peer_moved,
    ReauthDue: Controller._on_reauth_due,
}
