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
import functools
import ipaddress
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from xfrmctl import __version__
from xfrmctl.ike import persist, ts
from xfrmctl.ike.config import IkeConfig, Mode
from xfrmctl.ike.constants import DhId, EncrId, IntegId, PrfId, ProtocolId
from xfrmctl.ike.errors import LocalError
from xfrmctl.ike.events import (
    ChildSaDeleted,
    ChildSaNegotiated,
    Event,
    FailureReason,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
    PeerMoved,
    VirtualIpAssigned,
)
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.payloads import TrafficSelector
from xfrmctl.ike.proposals import Suite
from xfrmctl.ike.sa import ChildState, Datagram, Endpoint, IkeSa, IkeState
from xfrmctl.kernel.interface import SPI_MAX, SPI_MIN, KernelIPsec
from xfrmctl.kernel.links import KernelLinks, VtiDevice, XfrmInterface
from xfrmctl.kernel.types import (
    REQID_MIN,
    Acquire,
    ChildInstall,
    Expire,
    IPAddress,
    KernelError,
    KernelEvent,
    PolicySpec,
    Proto,
    SaId,
    SaSpec,
)
from xfrmctl.kernel.types import Counters as KernelCounters
from xfrmctl.kernel.types import Mapping as KernelMapping

from . import conf as cf
from .install import build_child, interface_mtu, trap_policies
from .pool import AddressPool
from .ports import (
    ActionRejected,
    ChildSaInfo,
    ConfigChange,
    ConfigKind,
    ConnectionState,
    ConnectionStatus,
    Counters,
    DaemonStatus,
    IkeSaInfo,
    KernelView,
    PolicyInfo,
    Target,
    Traffic,
    UnknownTarget,
)
from .routes import PolicyRoutes
from .state import StateFile, child_from_dict, child_to_dict

log = logging.getLogger("xfrmctl.daemon")
VIP_DEVICE = "lo"
NAT_KEEPALIVE_INTERVAL = 20.0  # seconds, as strongSwan's default
STATE_INTERVAL = 1.0  # seconds between saves of the state (when something changed)
RETRY_DELAY = 10.0  # seconds before re-initiating a start/restart connection
STOP_GRACE = 3.0  # seconds to wait for peers to answer our deletes on shutdown


@dataclass(slots=True)
class ChildRecord:
    """A CHILD_SA as installed in the kernel."""

    event: ChildSaNegotiated
    install: ChildInstall
    reqid: int
    installed_at: float
    state: str = "INSTALLED"
    in_kernel: bool = False  # install_child succeeded: there is something to remove
    # a rekey's responder, or either end of a collision: the outbound SA waits until the
    # old CHILD_SA is deleted (see the module's docstring)
    outbound_pending: bool = False


@dataclass(frozen=True, slots=True)
class _SendAfter:
    """Datagrams queued behind the kernel work their exchange caused."""

    datagrams: tuple[Datagram, ...]


@dataclass(frozen=True, slots=True)
class _TrapChild:
    name: str
    conf: cf.ChildConf
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local: str
    remote: str


@dataclass(slots=True)
class ConnectionRecord:
    id: int
    name: str
    conf: cf.ConnectionConf
    ike: IkeConfig
    state: ConnectionState = ConnectionState.DOWN
    reason: str | None = None
    detail: dict[str, object] = field(default_factory=dict)
    since: float = 0.0
    traps: list[PolicySpec] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # interfaces we created
    wanted: bool = False  # should be up (start action, API initiate, DPD restart)


def _name(enum: type, value: int | None) -> str | None:
    if value is None:
        return None
    try:
        return str(enum(value).name)
    except ValueError:
        return str(value)


def _utc(ts_: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts_, UTC) if ts_ else None


class Controller:
    """The running gateway. `send` is set by the endpoints once they are bound."""

    def __init__(self, conf: cf.DaemonConf, kernel: KernelIPsec, *,
                 clock: Callable[[], float] = time.time, state: StateFile | None = None,
                 links: KernelLinks | None = None) -> None:
        self.conf = conf
        self.links = links  # route-based children need it (XFRM interfaces, VTIs)
        # policy-based tunnels: routes to the remote selectors (table 220)
        self.routes = PolicyRoutes(links, conf.route_table, conf.route_priority) \
            if links is not None and conf.install_routes else None
        self.state = state  # set: SAs are saved, and a restart keeps the tunnels
        self._dirty = False
        self.kernel = kernel
        self.clock = clock
        self.manager = IkeManager(cookie_threshold=conf.cookie_threshold,
                                  spi_allocator=self._random_spi)
        self.send: Callable[[Datagram], None] = lambda d: None
        # NAT keepalive sender (RFC 3948 4): set by the endpoints, like `send`.
        self.keepalive: Callable[[Endpoint, Endpoint], None] = lambda local, remote: None
        self.connections: dict[str, ConnectionRecord] = {}
        self.children: dict[int, ChildRecord] = {}  # by inbound SPI
        self.started_at = clock()
        self.counters: dict[str, int] = {"ike_setups": 0, "child_setups": 0, "rekeys": 0,
                                         "kernel_installs": 0}
        self.failures: dict[str, int] = {}
        self.install_seconds = 0.0
        self.event_listeners: list[Callable[[str, dict[str, object]], None]] = []
        self._reqids: dict[tuple[str, str], int] = {}
        # Kernel work, in order: CHILD_SA installs (ChildRecord, batched when consecutive)
        # and other jobs (callables returning an awaitable or None).
        # Datagrams wait for the kernel work queued before them (_SendAfter).
        self._jobs: deque[ChildRecord | _SendAfter | Callable[[], object]] = deque()
        self._outbox: list[Datagram] = []
        self._flushing = False
        self._lingering: dict[SaId, asyncio.TimerHandle] = {}  # rekeyed inbound SAs
        # Unfinished rekeys: the old CHILD_SA's inbound SPI -> the CHILD_SAs made from it
        # (two in a collision), kept while the old one lives or a new one waits to send.
        self._rekeys: dict[int, list[ChildRecord]] = {}
        self._job_ready = asyncio.Event()
        self._jobs_idle = asyncio.Event()
        self._jobs_idle.set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pools: dict[str, AddressPool] = {}
        self._vips: dict[int, str] = {}  # IKE SA id -> virtual IP we put on VIP_DEVICE
        # Database mode: reads the desired state; config_changed reloads from it.
        self.config_source: Callable[[], Awaitable[cf.DaemonConf]] | None = None
        # Stored connections that could not be loaded (database id -> why), shown as down.
        self.not_loaded: dict[int, str] = {}
        self.kernel_kind = "netlink"  # "memory": the in-memory kernel (said in status)
        self._reload_lock = asyncio.Lock()
        self.load(conf)

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
            if old is not None and old.conf == conn:
                continue
            pool = None
            if conn.pool:
                pool = self._pools.setdefault(name, AddressPool(conn.pool))
            # The database's id if given; else kept across reloads, new ones numbered on.
            ident = conn.id or (old.id if old else self._next_id())
            record = ConnectionRecord(ident, name, conn,
                                      cf.ike_config(name, conn, pool))
            self.connections[name] = record
            changed.append(name)
        for name in set(self.connections) - set(conf.connections):
            changed.append(name)
        self.manager.configs = {r.name: r.ike for r in self.connections.values()
                                if r.name in conf.connections}
        return changed

    def _next_id(self) -> int:
        return max((r.id for r in self.connections.values()), default=0) + 1

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._job_loop(), name="kernel-jobs"),
                       loop.create_task(self._kernel_event_loop(), name="kernel-events"),
                       loop.create_task(self._keepalive_loop(), name="nat-keepalive")]
        if self.state is not None:
            await self._restore(self.state)
            self._tasks.append(loop.create_task(self._state_writer(self.state),
                                                name="state-writer"))
        for record in self.connections.values():
            await self._ensure_links(record)
            if not self._sas_of(record):
                await self._apply_start_action(record)

    async def stop(self, keep_tunnels: bool | None = None) -> None:
        """Delete our SAs (telling peers) and remove what we installed; or, when the state
        is saved (the default with a state file), leave the tunnels to the kernel and save
        what the next process needs to take them back."""
        keep = self.state is not None if keep_tunnels is None else keep_tunnels
        if keep and self.state is not None:
            await self.drain()
            for child in [c for c in self.children.values() if c.outbound_pending]:
                await self._add_outbound(child)  # the saved CHILD_SAs are whole
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
        for child in list(self.children.values()):
            await self._remove(child)  # peers that did not answer in time
        self.children.clear()
        for sa_id in list(self._lingering):
            await self._delete_lingering(sa_id)
        for record in self.connections.values():
            await self._remove_traps(record)
            await self._remove_links(record)
        if self.routes is not None:
            await self.routes.close()
        if self.state is not None:
            self.state.clear()
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for handle in self._lingering.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> None:
        """Wait until every queued kernel job ran (tests and shutdown)."""
        await self._jobs_idle.wait()
        await asyncio.sleep(0)

    async def _apply_start_action(self, record: ConnectionRecord) -> None:
        if record.conf.start_action is cf.StartAction.START:
            record.wanted = True
            self._initiate(record)
        elif record.conf.start_action is cf.StartAction.TRAP:
            await self._install_traps(record)

    # ----------------------------------------------------------------- datagrams

    def receive(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self.manager.receive_datagram(data, local, remote, self.clock())
        self._flush()

    def _flush(self) -> None:
        """Send what the IKE core wrote and act on its events. Datagrams go out after
        the kernel work those events queued (a flush inside one adds to the outer's)."""
        self._outbox.extend(self.manager.datagrams_to_send())
        if self._flushing:
            return
        self._flushing, queued = True, len(self._jobs)  # only grows until we return
        try:
            while (event := self.manager.next_event()) is not None:
                self._on_event(event)
                self._outbox.extend(self.manager.datagrams_to_send())
        finally:
            self._flushing = False
        datagrams, self._outbox = tuple(self._outbox), []
        if datagrams and len(self._jobs) != queued:
            self._queue_job(_SendAfter(datagrams))
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
        if self.event_listeners or log.isEnabledFor(logging.INFO):
            self._emit(type(event).__name__, _event_fields(event))
        if handler is not None:
            handler(self, event)

    def _emit(self, kind: str, fields: dict[str, object]) -> None:
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
        vip = self._vips.pop(event.ike_sa, None)
        if vip is not None and event.reason != "rekeyed":
            self._queue_job(lambda: self._vip_address(vip, add=False))
        record = self.connections.get(event.connection)
        if record is None or any(sa.name == record.name and sa.state is not IkeState.CLOSED
                                 for sa in self.manager.all()):
            return
        if event.reason == "rekeyed":
            return
        self._connection_down(record, event.reason)

    def _on_failed(self, event: NegotiationFailed) -> None:
        self.failures[event.reason.value] = self.failures.get(event.reason.value, 0) + 1
        log.warning("negotiation failed: %s: %s (ours: %s; theirs: %s)", event.connection,
                    event.message, "; ".join(event.ours) or "-",
                    "; ".join(event.theirs) or "-")
        record = self.connections.get(event.connection)
        if record is None or event.child is not None:
            return
        record.detail = {"message": event.message, "ours": list(event.ours),
                         "theirs": list(event.theirs)}
        self._connection_down(record, event.reason.value)

    def _connection_down(self, record: ConnectionRecord, reason: str) -> None:
        was_up = record.state is ConnectionState.UP
        self._set_state(record, ConnectionState.DOWN, reason)
        if reason in ("deleted", "daemon stopped"):
            return
        if reason == "deleted by peer":
            self._after_peer_delete(record)
            return
        if was_up and reason == FailureReason.PEER_UNREACHABLE.value:
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
            self._queue_job(lambda: self._install_traps(record))

    def _retry(self, name: str) -> None:
        record = self.connections.get(name)
        if record is not None and record.wanted and record.state is ConnectionState.DOWN:
            self._initiate(record)

    def _set_state(self, record: ConnectionRecord, state: ConnectionState,
                   reason: str | None) -> None:
        record.state, record.since = state, self.clock()
        record.reason = reason
        if state is ConnectionState.UP:
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
        install = build_child(event, child_conf, self.reqid(event.connection, event.child))
        # A rekey we answered: the peer sends on the new SA once it has our response, we
        # once it deleted the old one. In a collision (both rekeyed at once) we wait too,
        # till the loser's SA is known.
        old = event.rekey_of
        siblings = self._rekeys.setdefault(old, []) \
            if old is not None and old in self.children else None
        pending = siblings is not None and (not event.initiator or any(
            c.event.spi_in in self.children for c in siblings))
        child = ChildRecord(event, install, install.inbound.reqid, self.clock(),
                            outbound_pending=pending)
        self.children[event.spi_in] = child
        if siblings is not None:
            siblings.append(child)
        self._queue_job(child)
        if child_conf.interface_name and child_conf.mtu is None:
            name, mtu = child_conf.interface_name, interface_mtu(event)
            self._queue_job(lambda: self._set_mtu(name, mtu))

    def _delete_with_peer(self, event: ChildSaNegotiated, reason: str) -> None:
        """Delete a CHILD_SA we will not keep, telling the peer (INFORMATIONAL)."""
        sa = self.manager.get(event.ike_sa)
        if sa is not None and sa.state is IkeState.ESTABLISHED:
            now, spi_in = self.clock(), event.spi_in
            with contextlib.suppress(LocalError):  # the peer may have deleted it meanwhile
                self.manager.act(sa, lambda s: s.delete_child(spi_in, now, reason))
            self._flush()

    def _on_child_deleted(self, event: ChildSaDeleted) -> None:
        child = self.children.pop(event.spi_in, None)
        if child is not None:
            child.state = "DELETED"
            self._queue_job(lambda: self._retire(child))

    async def _retire(self, child: ChildRecord) -> None:
        """Remove a deleted CHILD_SA; a rekey's successor then sends on its own SA (before
        the old one goes), and a replaced CHILD_SA's inbound SA lingers. Only the rekeys
        it was part of are looked at, as the old CHILD_SA or as a new one."""
        rekeys = [k for k in (child.event.spi_in, child.event.rekey_of) if k in self._rekeys]
        for old in rekeys:
            made = self._rekeys[old]
            while (ready := next((c for c in made if self._may_send(c)), None)) is not None:
                await self._add_outbound(ready)  # one at a time: each may block the next
        replaced = any(c.event.spi_in in self.children
                       for c in self._rekeys.get(child.event.spi_in, ()))
        await self._remove(child, linger=replaced)
        for old in rekeys:
            if old not in self.children and not any(
                    c.outbound_pending and c.event.spi_in in self.children
                    for c in self._rekeys[old]):
                del self._rekeys[old]  # done: the old one is gone, nobody waits

    def _may_send(self, waiting: ChildRecord) -> bool:
        """A CHILD_SA waiting for its outbound SA may have it now: its predecessor is
        gone, no sibling of the same rekey (a collision's) sends on its own, and the IKE
        core is not deleting it (a collision's loser)."""
        if not (waiting.outbound_pending and waiting.in_kernel):
            return False
        old = waiting.event.rekey_of
        if old is None or old in self.children or any(
                c is not waiting and c.event.spi_in in self.children and not c.outbound_pending
                for c in self._rekeys.get(old, ())):
            return False
        sa = self.manager.get(waiting.event.ike_sa)
        state = sa.child_state(waiting.event.spi_in) if sa is not None else None
        return state not in (None, ChildState.DELETING)

    async def _add_outbound(self, child: ChildRecord) -> None:
        try:
            await self.kernel.add_sa(child.install.outbound)
        except KernelError as exc:
            await self._remove(child)
            self._install_failed(child, exc)
            return
        child.outbound_pending = False

    def _on_vip(self, event: VirtualIpAssigned) -> None:
        log.info("virtual IP %s %s for %s", event.address,
                 "assigned" if event.to_peer else "received", event.connection)
        if not event.to_peer and self.links is not None:
            # A client uses its virtual IP as the source of tunnelled traffic: put it on
            # the loopback device while the IKE SA lives.
            address = f"{event.address}/{32 if ':' not in event.address else 128}"
            self._vips[event.ike_sa] = address
            self._queue_job(lambda: self._vip_address(address, add=True))

    async def _vip_address(self, address: str, add: bool) -> None:
        assert self.links is not None
        try:
            if add:
                await self.links.add_address(VIP_DEVICE, address)
            else:
                await self.links.delete_address(VIP_DEVICE, address)
        except KernelError as exc:
            log.warning("virtual IP %s on %s: %s", address, VIP_DEVICE, exc)

    # ----------------------------------------------------------------- kernel work

    def _queue_job(self, job: ChildRecord | _SendAfter | Callable[[], object]) -> None:
        self._jobs.append(job)
        self._jobs_idle.clear()
        self._job_ready.set()

    async def _job_loop(self) -> None:
        while True:
            await self._job_ready.wait()
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    if isinstance(job, ChildRecord | _SendAfter):
                        # installs queued together go in one batch, then their datagrams
                        batch = [job]
                        while self._jobs and isinstance(self._jobs[0], ChildRecord | _SendAfter):
                            batch.append(self._jobs.popleft())  # type: ignore[arg-type]
                        await self._install(
                            [j for j in batch if isinstance(j, ChildRecord)],
                            [d for j in batch if isinstance(j, _SendAfter) for d in j.datagrams])
                    else:
                        result = job()
                        if asyncio.iscoroutine(result):
                            await result
                except Exception:  # a kernel job must never stop the loop
                    log.exception("kernel job failed")
            self._job_ready.clear()
            self._jobs_idle.set()

    async def _install(self, batch: list[ChildRecord], datagrams: list[Datagram]) -> None:
        """Install CHILD_SAs in one netlink batch (each all-or-nothing on its own), then
        send the datagrams that announce them."""
        batch = [c for c in batch if c.state != "DELETED"]
        started = time.perf_counter()
        results: list[tuple[ChildRecord, KernelError | None]] = []
        for outbound in (True, False):
            group = [c for c in batch if c.outbound_pending is not outbound]
            if group:
                errors = await self.kernel.install_children([c.install for c in group],
                                                            outbound=outbound)
                results += zip(group, errors, strict=True)
        self.install_seconds += time.perf_counter() - started
        for datagram in datagrams:
            self.send(datagram)
        for child, error in results:
            if error is None:
                child.in_kernel = True
                self.counters["kernel_installs"] += 1
            else:
                self._install_failed(child, error)
        for child in batch:
            if child.in_kernel:
                await self._hold_child_routes(child)

    def _install_failed(self, child: ChildRecord, exc: KernelError) -> None:
        """Nothing of it stayed in the kernel (rolled back): tell the peer it is gone."""
        log.error("installing CHILD_SA %s failed: %s", child.event.child, exc)
        self.failures["KERNEL_INSTALL"] = self.failures.get("KERNEL_INSTALL", 0) + 1
        self.children.pop(child.event.spi_in, None)
        child.state = "FAILED"
        self._delete_with_peer(child.event, "kernel install failed")

    async def _remove(self, child: ChildRecord, linger: bool = False) -> None:
        """Take a CHILD_SA out of the kernel; with `linger` its inbound SA stays for
        `delete_rekeyed_delay` seconds."""
        if not child.in_kernel:
            return
        child.in_kernel = False
        linger = linger and self.conf.delete_rekeyed_delay > 0
        try:
            await self.kernel.remove_child(child.install, inbound=not linger,
                                           outbound=not child.outbound_pending)
        except KernelError as exc:
            log.warning("removing CHILD_SA %s: %s", child.event.child, exc)
        if linger:
            self._linger(child.install.inbound.id)
        if self.routes is not None:
            await self.routes.release(child.event.spi_in)

    def _linger(self, sa: SaId) -> None:
        def expired() -> None:
            self._queue_job(lambda: self._delete_lingering(sa))

        loop = asyncio.get_running_loop()
        self._lingering[sa] = loop.call_later(self.conf.delete_rekeyed_delay, expired)

    async def _delete_lingering(self, sa: SaId) -> None:
        if self._lingering.pop(sa, None) is not None:
            with contextlib.suppress(KernelError):  # expired in the kernel meanwhile
                await self.kernel.delete_sa(sa)

    async def _hold_child_routes(self, child: ChildRecord) -> None:
        event = child.event
        record = self.connections.get(event.connection)
        conf = record.conf.children.get(event.child) if record else None
        if conf is None or conf.interface_kind is not None or event.mode is not Mode.TUNNEL:
            return  # route-based (its interface has the routes) or transport
        vip = self._vips.get(event.ike_sa)
        await self._hold_routes(event.spi_in, event.local_ts, event.remote_ts,
                                event.remote[0], vip.split("/")[0] if vip else None)

    async def _hold_routes(self, owner: object, local_ts: Sequence[TrafficSelector],
                           remote_ts: Sequence[TrafficSelector], peer: str,
                           vip: str | None = None) -> None:
        """Routes are a convenience: a failure is logged, the SAs stay."""
        if self.routes is None:
            return
        try:
            routes = await self.routes.plan(local_ts, remote_ts, peer, vip)
            await self.routes.hold(owner, routes)
        except KernelError as exc:
            log.warning("routes to %s: %s", ", ".join(map(ts.format_ts, remote_ts)), exc)

    def _trap_children(self, record: ConnectionRecord) -> Iterator[_TrapChild]:
        """The configured children with the selectors their trap policies hold."""
        conf = record.conf
        if not conf.remote_addrs or not conf.local_addrs:
            return
        local, remote = conf.local_addrs[0], conf.remote_addrs[0]
        for name, child in conf.children.items():
            local_ts = tuple(ts.parse(t) for t in child.local_ts) or \
                (ts.from_address(ipaddress.ip_address(local)),)
            remote_ts = tuple(ts.parse(t) for t in child.remote_ts) or \
                (ts.from_address(ipaddress.ip_address(remote)),)
            yield _TrapChild(name, child, local_ts, remote_ts, local, remote)

    def _trap_specs(self, record: ConnectionRecord) -> list[PolicySpec]:
        return [spec for t in self._trap_children(record)
                for spec in trap_policies(t.local_ts, t.remote_ts, t.local, t.remote, t.conf,
                                          self.reqid(record.name, t.name))]

    async def _install_traps(self, record: ConnectionRecord) -> None:
        if record.traps:
            return
        for policy in self._trap_specs(record):
            try:
                await self.kernel.add_policy(policy)
                record.traps.append(policy)
            except KernelError as exc:
                log.error("trap policy for %s: %s", record.name, exc)
        if record.traps and record.state is ConnectionState.DOWN:
            self._set_state(record, ConnectionState.TRAPPED, None)
        await self._hold_trap_routes(record)

    async def _hold_trap_routes(self, record: ConnectionRecord) -> None:
        """A trap's first packet needs a route to reach its policy."""
        for trap in self._trap_children(record):
            if trap.conf.interface_kind is None and trap.conf.mode is Mode.TUNNEL:
                await self._hold_routes(("trap", record.name, trap.name), trap.local_ts,
                                        trap.remote_ts, trap.remote)

    async def _remove_traps(self, record: ConnectionRecord) -> None:
        for policy in record.traps:
            with contextlib.suppress(KernelError):
                await self.kernel.remove_policy(policy)
        record.traps = []
        if self.routes is not None:
            for name in record.conf.children:
                await self.routes.release(("trap", record.name, name))

    async def _keepalive_loop(self) -> None:
        """Behind a NAT, keep its UDP mapping open for the peer (one 0xFF octet on 4500)."""
        while True:
            await asyncio.sleep(NAT_KEEPALIVE_INTERVAL)
            for sa in self.manager.all():
                if sa.nat_local and sa.state is IkeState.ESTABLISHED:
                    self.keepalive(sa.local, sa.remote)

    # ----------------------------------------------------------------- route-based links

    async def _ensure_links(self, record: ConnectionRecord) -> None:
        """Create the XFRM interfaces / VTIs of a connection's route-based children, with
        their addresses and routes (already present ones, from before a restart, are kept)."""
        for name, child in record.conf.children.items():
            if child.interface_kind is None or child.interface_name is None:
                continue
            if self.links is None:
                log.error("%s/%s is route-based but no link manager is running",
                          record.name, name)
                continue
            try:
                await self._create_link(record.conf, child)
            except (KernelError, ValueError) as exc:
                log.error("interface %s of %s/%s: %s", child.interface_name, record.name,
                          name, exc)
                continue
            record.links.append(child.interface_name)

    async def _create_link(self, conn: cf.ConnectionConf, child: cf.ChildConf) -> None:
        links, name = self.links, child.interface_name
        assert links is not None and name is not None
        with contextlib.suppress(KernelError):
            await links.index(name)
            return  # kept from before a restart
        if child.interface_kind == "xfrmi":
            await links.add_xfrm_interface(XfrmInterface(name, child.if_id or 0), child.mtu)
        else:
            if not conn.local_addrs or not conn.remote_addrs:
                raise ValueError("a VTI needs local_addrs and remote_addrs")
            await links.add_vti(VtiDevice(
                name, ipaddress.IPv4Address(conn.local_addrs[0]),
                ipaddress.IPv4Address(conn.remote_addrs[0]), child.mark_in or 0,
                child.mark_out or 0), child.mtu)
        for address in child.interface_addresses:
            await links.add_address(name, address)
        for route in child.routes:
            await links.add_route(ipaddress.ip_network(route), name)

    async def _remove_links(self, record: ConnectionRecord) -> None:
        if self.links is None:
            return
        for name in record.links:
            with contextlib.suppress(KernelError):
                await self.links.delete_link(name)  # its addresses and routes go with it
        record.links = []

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
        if isinstance(event, Expire):
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
            self._queue_job(functools.partial(self._move_child, child, event.new))

    async def _move_child(self, child: ChildRecord, remote: Endpoint) -> None:
        """Re-address a CHILD_SA's SAs and policies to the peer's new endpoint."""
        record = self.connections.get(child.event.connection)
        conf = record.conf.children.get(child.event.child) if record else None
        if conf is None or not child.in_kernel or child.event.remote == remote:
            return
        if child.outbound_pending:  # a move is rare: stop waiting for the old one's delete
            await self._add_outbound(child)
            if not child.in_kernel:
                return
        event = replace(child.event, remote=remote)
        install = build_child(event, conf, child.reqid)
        try:
            await self.kernel.move_child(child.install, install)
        except KernelError as exc:
            log.error("moving CHILD_SA %s to %s:%d: %s", event.child, *remote, exc)
            return
        child.event, child.install = event, install
        await self._hold_child_routes(child)  # now via the peer's new address

    def _on_expire(self, event: Expire) -> None:
        child = self._child_by_sa(event.sa.spi)
        if child is None:
            return
        sa = self.manager.get(child.event.ike_sa)
        if sa is None:
            return
        now = self.clock()
        spi_in = child.event.spi_in
        if event.hard:
            self.manager.act(sa, lambda s: s.delete_child(spi_in, now, "hard expire"))
        elif child.state == "INSTALLED":
            child.state = "REKEYING"
            with contextlib.suppress(Exception):
                self.manager.act(sa, lambda s: s.rekey_child(spi_in, now))
        self._flush()

    def _child_by_sa(self, spi: int) -> ChildRecord | None:
        if spi in self.children:
            return self.children[spi]
        return next((c for c in self.children.values() if c.event.spi_out == spi), None)

    def _on_acquire(self, event: Acquire) -> None:
        for record in self.connections.values():
            if any(p.templates and p.templates[0].reqid == event.reqid for p in record.traps):
                if record.state in (ConnectionState.TRAPPED, ConnectionState.DOWN):
                    self._initiate(record)
                return

    # ----------------------------------------------------------------- actions

    def _initiate(self, record: ConnectionRecord, children: Sequence[str] | None = None) -> None:
        conf = record.conf
        if not conf.remote_addrs:
            raise ActionRejected(f"connection {record.name} has no remote address")
        remote_addr = conf.remote_addrs[0]
        local_addr = conf.local_addrs[0] if conf.local_addrs else self._source_for(remote_addr)
        self._set_state(record, ConnectionState.CONNECTING, None)
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

    def _sas_of(self, record: ConnectionRecord) -> list[IkeSa]:
        return [sa for sa in self.manager.all() if sa.name == record.name]

    def _ike_sa(self, sa_id: str) -> IkeSa:
        sa = self.manager.get(int(sa_id)) if sa_id.isdigit() else None
        if sa is None:
            raise UnknownTarget(f"IKE_SA {sa_id}")
        return sa

    async def initiate(self, connection_id: int, child_id: int | None = None) -> None:
        record = self._record(connection_id)
        children = None
        if child_id is not None:
            names = [n for n in record.conf.children if _child_id(record, n) == child_id]
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
        """Apply a new configuration, touching only connections that changed."""
        before = dict(self.connections)
        changed = self.load(conf)
        now = self.clock()
        for name in changed:
            old = before.get(name)
            if old is not None:
                old.wanted = False
                await self._remove_traps(old)
                await self._remove_links(old)
                for sa in self._sas_of(old):
                    self.manager.act(sa, lambda s: s.delete(now, "configuration changed"))
            if name not in conf.connections:
                self.connections.pop(name, None)
                continue
            await self._ensure_links(self.connections[name])
            await self._apply_start_action(self.connections[name])
        self._flush()
        return changed

    # ----------------------------------------------------------------- saved state

    def _snapshot(self) -> dict[str, object]:
        """IKE SAs with the CHILD_SAs they installed, and the reqids (see state.py)."""
        ike_sas = []
        for sa in self.manager.all():
            if sa.state is not IkeState.ESTABLISHED:
                continue
            children = [child_to_dict(c.event) for c in self.children.values()
                        if c.event.ike_sa == sa.id and c.in_kernel]
            ike_sas.append({"ike": persist.snapshot(sa), "children": children,
                            "installed_at": {str(c.event.spi_in): c.installed_at
                                             for c in self.children.values()
                                             if c.event.ike_sa == sa.id}})
        return {"reqids": [[c, n, r] for (c, n), r in self._reqids.items()],
                "ike_sas": ike_sas}

    async def _state_writer(self, state: StateFile) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            if self._dirty:
                self._dirty = False
                await self.drain()
                await asyncio.to_thread(state.save, self._snapshot())

    async def _restore(self, state: StateFile) -> None:
        """Take back the tunnels of the previous process: restore its IKE SAs, hold the
        CHILD_SAs still in the kernel, re-create those that are gone, remove orphans."""
        try:
            data = state.load() or {}
        except (ValueError, OSError) as exc:
            log.error("saved state %s unreadable, starting afresh: %s", state.path, exc)
            data = {}
        for conn, child, reqid in data.get("reqids", []):
            self._reqids[(conn, child)] = reqid
        present = {(s.spec.dst, s.spec.spi, s.spec.proto) for s in await self.kernel.dump_sas()}
        kept: set[tuple[IPAddress, int, Proto]] = set()
        for saved in data.get("ike_sas", []):
            kept |= self._restore_ike_sa(saved, present)
        for record in self.connections.values():
            await self._adopt_traps(record)
        removed = await self.kernel.remove_orphans(kept)
        for child in list(self.children.values()):
            await self._hold_child_routes(child)  # kept in the kernel: counted again
        log.info("restored %d IKE SAs, %d CHILD_SAs; removed %d orphan SAs, %d policies",
                 len(self.manager.all()), len(self.children), *removed)
        self._flush()

    def _restore_ike_sa(self, saved: dict[str, Any], present: set[Any]
                        ) -> set[tuple[IPAddress, int, Proto]]:
        record = self.connections.get(saved["ike"]["connection"])
        if record is None:
            return set()  # connection removed meanwhile: its kernel state goes as orphans
        sa = persist.restore(saved["ike"], record.ike, self.clock(), self._random_spi)
        self.manager.adopt(sa)
        kept: set[Any] = set()
        now = self.clock()
        for child_data in saved["children"]:
            event = child_from_dict(child_data, sa.id)
            child_conf = record.conf.children.get(event.child)
            ids = {(ipaddress.ip_address(e[0]), spi, proto) for e, spi, proto in (
                (event.local, event.spi_in, _proto(event)),
                (event.remote, event.spi_out, _proto(event)))}
            if child_conf is None or not ids <= present:
                self._replace_lost_child(sa, event, child_conf is not None, now)
                continue
            install = build_child(event, child_conf, self.reqid(event.connection, event.child))
            self.kernel.adopt_child(install)
            installed_at = saved.get("installed_at", {}).get(str(event.spi_in), now)
            self.children[event.spi_in] = ChildRecord(event, install, install.inbound.reqid,
                                                      installed_at, in_kernel=True)
            kept |= ids
        self._set_state(record, ConnectionState.UP, None)
        return kept

    def _replace_lost_child(self, sa: IkeSa, event: ChildSaNegotiated, still_configured: bool,
                            now: float) -> None:
        """A saved CHILD_SA gone from the kernel (or from the configuration): delete it
        with the peer, and negotiate a new one if it is still configured."""
        spi_in, name = event.spi_in, event.child
        self.manager.act(sa, lambda s: s.delete_child(spi_in, now, "lost in restart"))
        if still_configured:
            self.manager.act(sa, lambda s: s.create_child(name, now))

    async def _adopt_traps(self, record: ConnectionRecord) -> None:
        """Trap policies the previous process left in the kernel are held again."""
        if record.conf.start_action is not cf.StartAction.TRAP or self._sas_of(record):
            return
        present = {p.spec.key for p in await self.kernel.dump_policies()}
        for policy in self._trap_specs(record):
            if policy.key in present:
                self.kernel.adopt_policy(policy)
                record.traps.append(policy)
        if record.traps:
            self._set_state(record, ConnectionState.TRAPPED, None)
            await self._hold_trap_routes(record)

    # ----------------------------------------------------------------- read-only views

    async def list_ike_sas(self) -> Sequence[IkeSaInfo]:
        return [self._ike_info(sa) for sa in self.manager.all()]

    def _ike_info(self, sa: IkeSa) -> IkeSaInfo:
        suite = sa.suite or Suite(ProtocolId.IKE)
        record = self.connections.get(sa.name)
        rekey_at = sa.rekey_deadline
        return IkeSaInfo(
            id=str(sa.id), connection_id=record.id if record else None,
            connection_name=sa.name if record else None, state=sa.state.name,
            initiator=sa.is_initiator, spi_i=int.from_bytes(sa.spi_i, "big"),
            spi_r=int.from_bytes(sa.spi_r, "big"), local_addr=sa.local[0],
            local_port=sa.local[1], remote_addr=sa.remote[0], remote_port=sa.remote[1],
            local_id=str(sa.local_id) if sa.local_id else None,
            remote_id=str(sa.remote_id) if sa.remote_id else None,
            encryption=_encr_name(suite), integrity=_name(IntegId, suite.integ),
            prf=_name(PrfId, suite.prf), dh_group=_name(DhId, suite.dh),
            established_at=_utc(sa.established_at), rekey_at=_utc(rekey_at),
            nat_local=sa.nat_local, nat_remote=sa.nat_remote)

    def ike_sa_info(self, sa_id: int) -> IkeSaInfo | None:
        sa = self.manager.get(sa_id)
        return self._ike_info(sa) if sa is not None else None

    def child_sa_info(self, spi_in: int) -> ChildSaInfo | None:
        """One CHILD_SA without kernel counters (cheap, for the recorder)."""
        child = self.children.get(spi_in)
        return self._child_info(child, Traffic()) if child is not None else None

    async def list_child_sas(self) -> Sequence[ChildSaInfo]:
        out = []
        for child in list(self.children.values()):
            traffic = await self._traffic(child)
            out.append(self._child_info(child, traffic))
        return out

    async def _traffic(self, child: ChildRecord) -> Traffic:
        try:
            inbound = await self.kernel.counters(child.install.inbound.id)
            outbound = KernelCounters() if child.outbound_pending else \
                await self.kernel.counters(child.install.outbound.id)
        except KernelError:
            return Traffic()
        return Traffic(inbound.bytes, outbound.bytes, inbound.packets, outbound.packets)

    def _child_info(self, child: ChildRecord, traffic: Traffic) -> ChildSaInfo:
        event = child.event
        record = self.connections.get(event.connection)
        lifetime = child.install.inbound.lifetime
        return ChildSaInfo(
            id=str(event.child_id), ike_sa_id=str(event.ike_sa),
            connection_id=record.id if record else None,
            child_id=_child_id(record, event.child) if record else None,
            name=event.child, state=child.state, mode=event.mode.value,
            protocol=event.protocol.name.lower(), spi_in=event.spi_in, spi_out=event.spi_out,
            local_ts=tuple(map(ts.format_ts, event.local_ts)),
            remote_ts=tuple(map(ts.format_ts, event.remote_ts)),
            encryption=_encr_name(event.suite), integrity=_name(IntegId, event.suite.integ),
            dh_group=_name(DhId, event.suite.dh), esn=event.suite.esn, encap=event.encap,
            if_id=child.install.inbound.if_id or None, installed_at=_utc(child.installed_at),
            rekey_at=_utc(child.installed_at + lifetime.soft_add_expires_seconds)
            if lifetime.soft_add_expires_seconds else None,
            expire_at=_utc(child.installed_at + lifetime.hard_add_expires_seconds)
            if lifetime.hard_add_expires_seconds else None,
            traffic=traffic)

    async def list_policies(self) -> Sequence[PolicyInfo]:
        out = []
        for child in self.children.values():
            record = self.connections.get(child.event.connection)
            out += [_policy_info(p, str(child.event.child_id), record.id if record else None)
                    for p in child.install.policies]
        for record in self.connections.values():
            out += [_policy_info(p, None, record.id) for p in record.traps]
        return out

    async def kernel_view(self) -> KernelView:
        states = [_sa_dict(s.spec, s.counters) for s in await self.kernel.dump_sas()]
        policies = [_policy_dict(p.spec) for p in await self.kernel.dump_policies()]
        return KernelView(tuple(states), tuple(policies))

    async def status(self) -> DaemonStatus:
        connections = tuple(
            ConnectionStatus(r.id, r.state, r.reason, dict(r.detail),
                             tuple(str(sa.id) for sa in self._sas_of(r)), _utc(r.since))
            for r in sorted(self.connections.values(), key=lambda r: r.id)) + tuple(
            ConnectionStatus(ident, ConnectionState.DOWN, f"not loaded: {why}")
            for ident, why in sorted(self.not_loaded.items()))
        counters = Counters(self.counters["ike_setups"], self.counters["child_setups"],
                            self.counters["rekeys"], dict(self.failures),
                            self.counters["kernel_installs"], self.install_seconds)
        return DaemonStatus(_utc(self.started_at) or datetime.now(UTC), connections, counters,
                            __version__, kernel=self.kernel_kind)


def _child_id(record: ConnectionRecord, name: str) -> int | None:
    """The child's database id, or (file mode) its 1-based place in sorted order."""
    child = record.conf.children.get(name)
    if child is None:
        return None
    return child.id or sorted(record.conf.children).index(name) + 1


def _encr_name(suite: Suite) -> str | None:
    if suite.encr is None:
        return None
    name = _name(EncrId, suite.encr)
    return f"{name}_{suite.encr_bits}" if suite.encr_bits else name


def _policy_info(p: PolicySpec, child_id: str | None, connection_id: int | None) -> PolicyInfo:
    sel = p.selector
    return PolicyInfo(direction=p.direction.name.lower(), src=str(sel.src), dst=str(sel.dst),
                      proto=sel.proto, action=p.action.name.lower(), priority=p.priority,
                      if_id=p.if_id or None, mark=p.mark.value if p.mark else None,
                      mark_mask=p.mark.mask if p.mark else None, child_sa_id=child_id,
                      connection_id=connection_id)


def _sa_dict(spec: SaSpec, counters: KernelCounters) -> dict[str, object]:
    algs = {kind: {"name": alg.name, "bits": len(alg.key) * 8}
            for kind, alg in (("aead", spec.aead), ("crypt", spec.crypt), ("auth", spec.auth))
            if alg is not None}
    return {"src": str(spec.src), "dst": str(spec.dst), "spi": f"0x{spec.spi:08x}",
            "proto": spec.proto.name.lower(), "mode": spec.mode.name.lower(),
            "reqid": spec.reqid, "algorithms": algs, "if_id": spec.if_id,
            "encap": bool(spec.encap), "bytes": counters.bytes, "packets": counters.packets}


def _policy_dict(p: PolicySpec) -> dict[str, object]:
    info = _policy_info(p, None, None)
    return {"dir": info.direction, "src": info.src, "dst": info.dst, "proto": info.proto,
            "action": info.action, "priority": info.priority, "if_id": info.if_id,
            "reqids": [t.reqid for t in p.templates]}


_PLAIN = (int, float, str, bool, type(None), list, tuple)


def _event_fields(event: Event) -> dict[str, object]:
    """Event fields for logs and the event stream: never key material."""
    hidden = {"encr_key_in", "integ_key_in", "encr_key_out", "integ_key_out"}
    out: dict[str, object] = {}
    for name in event.__dataclass_fields__:
        if name in hidden:
            continue
        value = getattr(event, name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, tuple) and value and hasattr(value[0], "ts_type"):
            value = [ts.format_ts(t) for t in value]
        elif isinstance(value, Suite) or not isinstance(value, _PLAIN):
            value = str(value)
        out[name] = value
    return out


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
}


def _proto(event: ChildSaNegotiated) -> Proto:
    return Proto.AH if event.protocol is ProtocolId.AH else Proto.ESP
