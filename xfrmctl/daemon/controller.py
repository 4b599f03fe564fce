"""The controller: joins the IKE core and the kernel, and decides.

IKE events -> kernel work (install a CHILD_SA, remove one), in the order they happened,
batched; kernel events (ACQUIRE, EXPIRE soft/hard) -> IKE actions (initiate, rekey,
delete); REST actions -> IKE actions. It implements the API's `Controller` port.

Nothing here blocks the loop: the IKE core is pure computation, the kernel is async
netlink, and every piece of kernel work goes through one ordered queue so a rekeyed
CHILD_SA is always installed before its predecessor is removed.

The parts it wires (each in its module): the CHILD_SA installer and its ordered queue of
kernel work (installer.py, make-before-break), the IKE side of CHILD_SAs (childsas.py),
connection lifecycle (lifecycle.py), configuration changes and reauthentication
(changes.py), traps (traps.py), route-based interfaces (routelinks.py), the saved state
(restore.py) and the read-only views (views.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from xfrmctl.ike.eap import EapStep
from xfrmctl.ike.events import (
    ChildSaDeleted,
    ChildSaNegotiated,
    Event,
    IkeSaDown,
    IkeSaMoved,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
    PeerMoved,
    ReauthDue,
    RevocationFetch,
    VirtualIpAssigned,
)
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.revocation import RevocationStore
from xfrmctl.ike.sa import Datagram, Endpoint, IkeSa, IkeState
from xfrmctl.ike.tasks import ike_eap
from xfrmctl.kernel.interface import SPI_MAX, SPI_MIN, KernelIPsec
from xfrmctl.kernel.links import KernelLinks
from xfrmctl.kernel.nft import Firewall
from xfrmctl.kernel.types import (
    REQID_MIN,
    Acquire,
    AddressChange,
    EventsLost,
    Expire,
    KernelEvent,
    RouteChange,
    SaId,
)
from xfrmctl.kernel.types import Mapping as KernelMapping
from xfrmctl.port import (
    ActionRejected,
    ChildSaInfo,
    ConfigChange,
    ConfigKind,
    ConnectionState,
    DaemonStatus,
    FailureInfo,
    IkeSaInfo,
    KernelView,
    PolicyInfo,
    Target,
    UnknownTarget,
)

from . import conf as cf
from .changes import Changes
from .childsas import ChildSas
from .installer import ChildInstaller, SendAfter
from .lifecycle import Lifecycle
from .mobility import Mobility
from .mss import MssClamps
from .pool import AddressPool
from .radius import RadiusClient
from .records import (
    ChildRecord,
    ConnectionRecord,
    InstallFailure,
)
from .records import child_id as child_id_of
from .restore import Restorer, read_boot_id
from .revocation import RevocationFetcher
from .routelinks import LinkSpec, RouteLinks
from .routes import PolicyRoutes
from .state import StateFile
from .traps import Traps
from .views import Views, event_fields

log = logging.getLogger("xfrmctl.daemon")
NAT_KEEPALIVE_INTERVAL = 20.0  # seconds, as strongSwan's default
STOP_GRACE = 3.0  # seconds to wait for peers to answer our deletes on shutdown
UNMATCHED_KEPT = 32  # failures no connection owns, shown in `status` (newest)
RESYNC_DELAY = 1.0  # seconds before comparing the kernel with our state after a failure
INSTALL_RETRY = 2.0  # seconds before a failed CHILD_SA install is negotiated again


class Controller:
    """The running gateway. `send` is set by the endpoints once they are bound."""

    def __init__(self, conf: cf.DaemonConf, kernel: KernelIPsec, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, state: StateFile | None = None,
                 links: KernelLinks | None = None, firewall: Firewall | None = None) -> None:
        self.conf = conf
        self.links = links  # route-based children need it (XFRM interfaces, VTIs)
        self.route_links = RouteLinks(links)
        self._wanted_links: dict[str, LinkSpec] = {}  # by name, as configured
        # policy-based tunnels: routes to the remote selectors (table 220)
        self.routes = PolicyRoutes(links, conf.route_table, conf.route_priority) \
            if links is not None and conf.install_routes else None
        # TCP MSS clamping (children with mss auto or a number): the daemon's nftables rules
        self.mss = MssClamps(firewall) if firewall is not None else None
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
        self._vips: dict[int, str] = {}  # IKE SA id -> virtual IP we put on childsas.VIP_DEVICE
        # Database mode: reads the desired state; config_changed reloads from it.
        self.config_source: Callable[[], Awaitable[cf.DaemonConf]] | None = None
        # and why it left connections out (name -> why)
        self.load_problems: Callable[[], dict[str, str]] | None = None
        self.kernel_kind = "netlink"  # "memory": the in-memory kernel (said in status)
        self._reload_lock = asyncio.Lock()
        self.child_sas = ChildSas(self)
        self.mobility = Mobility(self)
        self.installer = ChildInstaller(
            kernel, self.child_sas, clock=clock,
            delete_rekeyed_delay=lambda: self.conf.delete_rekeyed_delay,
            install_retry=INSTALL_RETRY, resync_delay=RESYNC_DELAY)
        self.views = Views(self)
        self.lifecycle = Lifecycle(self)
        self.changes = Changes(self)
        self.saved = Restorer(self)
        self.traps = Traps(kernel, self.routes, self.reqid)
        # CRLs and OCSP answers (shared by the connections), and the fetches IKE_AUTH asks
        self.revocation = RevocationFetcher(RevocationStore(), self._resume_auth,
                                            wall_clock=wall_clock)
        self.radius = RadiusClient()  # EAP relayed to a RADIUS server (eap-radius)
        self.radius.deliver = self._eap_answer
        self.changes.load(conf)

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

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.installer.run(), name="kernel-jobs"),
                       loop.create_task(self._kernel_event_loop(), name="kernel-events"),
                       loop.create_task(self._keepalive_loop(), name="nat-keepalive")]
        if self.mss is not None:
            await self.mss.start()
        if self.state is not None:
            try:
                await self.saved.restore(self.state)
            finally:
                self.installer.ready.set()
            self._tasks.append(loop.create_task(self.saved.writer(self.state),
                                                name="state-writer"))
        self.installer.ready.set()
        if self.mss is not None:
            await self.mss.prune()  # a previous process's rules no CHILD_SA claimed
        await self._sync_links(adopt=True)
        for record in self.connections.values():
            if not self._sas_of(record):
                await self._apply_start_action(record)

    async def stop(self, keep_tunnels: bool | None = None) -> None:
        """Delete our SAs (telling peers) and remove what we installed; or, when the state
        is saved (the default with a state file), leave the tunnels to the kernel and save
        what the next process needs to take them back."""
        keep = self.state is not None if keep_tunnels is None else keep_tunnels
        await self.radius.close()  # logins waiting for the RADIUS server are given up
        if keep and self.state is not None:
            await self.drain()
            await self.installer.complete_pending()  # the saved CHILD_SAs are whole
            self.state.save(self.saved.snapshot())
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
        if self.mss is not None:
            await self.mss.close()
        if self.state is not None:
            self.state.clear()
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.mobility.stop()
        await self.revocation.close()
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

    def _eap_answer(self, sa_id: int, step: EapStep) -> None:
        """The RADIUS server answered an EAP packet of IKE SA `sa_id`: IKE_AUTH goes on."""
        sa = self.manager.get(sa_id)
        if sa is None:
            return  # the IKE SA went meanwhile
        now = self.clock()
        self.manager.act(sa, lambda s: ike_eap.eap_answer(s, step, now))
        self._flush()

    def _resume_auth(self, sa_id: int) -> None:
        """Revocation information came (or the fetch gave up): IKE_AUTH goes on."""
        self.manager.wall_offset = self.wall_clock() - self.clock()
        self.manager.resume_auth(sa_id, self.clock())
        self._flush()

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
            self.lifecycle.on_failed(event)  # a stranger's: reported as UnmatchedPeer, rate-limited
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
            self.lifecycle.set_state(record, ConnectionState.UP, None)

    def _on_ike_rekeyed(self, event: IkeSaRekeyed) -> None:
        self.counters["rekeys"] += 1
        for child in self.children.values():  # the CHILD_SAs moved to the new IKE SA
            if child.event.ike_sa == event.ike_sa:
                child.event = replace(child.event, ike_sa=event.new_ike_sa)
        if event.ike_sa in self._vips:
            self._vips[event.new_ike_sa] = self._vips.pop(event.ike_sa)

    # ----------------------------------------------------------------- installer host

    async def _install_traps(self, record: ConnectionRecord) -> None:
        if await self.traps.install(record) and record.state is ConnectionState.DOWN:
            self.lifecycle.set_state(record, ConnectionState.TRAPPED, None)

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
            self.child_sas.on_expire(event)
        elif isinstance(event, Acquire):
            self._on_acquire(event)
        elif isinstance(event, KernelMapping):
            self.child_sas.on_mapping(event)
        elif isinstance(event, (AddressChange, RouteChange)):
            self.mobility.on_kernel_event(event)

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
        self.lifecycle.set_state(record, ConnectionState.CONNECTING, None)
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

    def load(self, conf: cf.DaemonConf) -> list[str]:
        """Take a new configuration; returns the names of connections that changed."""
        return self.changes.load(conf)

    async def reload(self, conf: cf.DaemonConf) -> list[str]:
        """Apply a new configuration, doing the least that reaches it (changes.py)."""
        return await self.changes.reload(conf)

    async def config_changed(self, kind: ConfigKind, object_id: int,
                             change: ConfigChange) -> None:
        """The file-backed daemon reloads on SIGHUP; the database-backed one re-reads its
        desired state here (serialized, so the last change always wins)."""
        if self.config_source is None:
            raise ActionRejected("this daemon is configured from a file: edit it and send SIGHUP")
        async with self._reload_lock:
            changed = await self.changes.reload(await self.config_source())
        log.info("%s %s %s: reloaded %s", kind, object_id, change, ", ".join(changed) or "-")

    # ----------------------------------------------------------------- reauthentication

    # ----------------------------------------------------------------- saved state

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


_Handler = Callable[[Controller, Any], None]  # each takes its own event type
_EVENT_HANDLERS: dict[type, _Handler] = {
    IkeSaUp: Controller._on_ike_up,
    IkeSaRekeyed: Controller._on_ike_rekeyed,
    IkeSaDown: lambda c, e: c.lifecycle.on_ike_down(e),
    NegotiationFailed: lambda c, e: c.lifecycle.on_failed(e),
    ChildSaNegotiated: lambda c, e: c.child_sas.on_child(e),
    ChildSaDeleted: lambda c, e: c.child_sas.on_child_deleted(e),
    VirtualIpAssigned: lambda c, e: c.child_sas.on_vip(e),
    PeerMoved: lambda c, e: c.child_sas.on_peer_moved(e),
    IkeSaMoved: lambda c, e: c.mobility.on_moved(e),
    ReauthDue: lambda c, e: c.changes.on_reauth_due(e),
    RevocationFetch: lambda c, e: c.revocation.on_fetch(e),
}
