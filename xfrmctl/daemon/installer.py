"""The CHILD_SA installer: negotiated CHILD_SAs into the kernel and out again, in order.

Every piece of kernel work goes through one ordered queue of typed jobs, so a rekeyed
CHILD_SA is always installed before its predecessor is removed. A rekey loses no packet
(make-before-break, as strongSwan does it):
- datagrams that follow kernel work wait for it (`SendAfter`): a response announcing a
  CHILD_SA leaves once its SAs are in, so the peer never sends on an SA we lack;
- the responder of a CHILD_SA rekey installs the new inbound SA at once but keeps sending
  on the old one until the initiator deletes it (by then the initiator has the new SA
  inbound); the initiator sends on the new SA as soon as it has the response;
- a rekeyed CHILD_SA's inbound SA stays `delete_rekeyed_delay` seconds for packets still
  on the wire.
A failed install leaves nothing behind (the kernel layer rolls it back); the peer is told
and the child negotiated again after a back-off. The installer talks to the IKE side only
through `InstallerHost`, so it is tested with synthetic events on the fake kernel.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.sa import ChildState, Datagram
from xfrmctl.kernel.capabilities import kernel_reason
from xfrmctl.kernel.interface import KernelIPsec
from xfrmctl.kernel.types import IPAddress, KernelError, PolicySpec, Proto, SaId, SaSpec

from . import conf as cf
from .install import build_child
from .records import ChildRecord, ChildRecordState, InstallFailure
from .routelinks import LinkSpec

log = logging.getLogger("xfrmctl.daemon")
RESYNC_DELAY = 1.0  # seconds before comparing the kernel with our state after a failure
RESYNC_MAX = 60.0  # back-off limit while the comparison itself keeps failing
INSTALL_RETRY = 2.0  # seconds before a failed CHILD_SA install is negotiated again
INSTALL_RETRY_MAX = 300.0  # back-off limit (doubling per failure of the same child)


@dataclass(frozen=True, slots=True)
class SendAfter:
    """Datagrams queued behind the kernel work their exchange caused."""

    datagrams: tuple[Datagram, ...]


# A kernel job: a CHILD_SA to install (consecutive ones go in one batch), datagrams that
# wait for the installs before them, or any other work (a callable, maybe async).
Job = ChildRecord | SendAfter | Callable[[], object]
SaKey = tuple[IPAddress, int, Proto]
PeerKey = tuple[str, str, str]  # connection, child, the peer's address


def _peer_key(event: ChildSaNegotiated) -> PeerKey:
    return event.connection, event.child, event.remote[0]


class InstallerHost(Protocol):
    """What the installer needs of the rest of the daemon (the IKE side)."""

    @property
    def counters(self) -> dict[str, int]: ...

    @property
    def failures(self) -> dict[str, int]: ...

    def send(self, datagram: Datagram) -> None: ...

    def emit(self, kind: str, fields: dict[str, object]) -> None: ...

    def child_state(self, ike_sa: int, spi_in: int) -> ChildState | None:
        """The IKE core's state of a CHILD_SA (None: the core no longer has it)."""

    def install_failed(self, child: ChildRecord, reason: str, delay: float) -> None:
        """The kernel refused a CHILD_SA: tell the peer, negotiate it again in `delay`."""

    def lost(self, child: ChildRecord) -> None:
        """The kernel lost a CHILD_SA's SA: replace it with the peer."""

    def soft_expired(self, child: ChildRecord) -> None:
        """A soft expire passed unnoticed: rekey it."""

    def trap_policies(self) -> list[PolicySpec]: ...

    async def in_kernel(self, child: ChildRecord) -> None:
        """A CHILD_SA's SAs are in (again, or at a new address): its routes."""

    async def leaving(self, child: ChildRecord) -> None:
        """A CHILD_SA is about to leave the kernel (its interface may go first)."""

    async def left(self, child: ChildRecord) -> None:
        """A CHILD_SA left the kernel (its routes go)."""


def _key(sa: SaSpec) -> SaKey:
    return sa.dst, sa.spi, sa.proto


class ChildInstaller:
    """The CHILD_SAs and the ordered queue of kernel work."""

    def __init__(self, kernel: KernelIPsec, host: InstallerHost, *,
                 clock: Callable[[], float] = time.monotonic,
                 delete_rekeyed_delay: Callable[[], float] = lambda: 0.0,
                 install_retry: float = INSTALL_RETRY, resync_delay: float = RESYNC_DELAY
                 ) -> None:
        self.kernel = kernel
        self.host = host
        self.clock = clock
        self.delete_rekeyed_delay = delete_rekeyed_delay
        self.children: dict[int, ChildRecord] = {}  # by inbound SPI, while IKE has them
        # the same, by connection, child and peer address (what a new CHILD_SA replaces),
        # so a setup looks at its peer's CHILD_SAs, not at every one of the connection
        self._by_peer: dict[PeerKey, dict[int, ChildRecord]] = {}
        # CHILD_SAs with SAs in the kernel (in_kernel), by inbound SPI: also those deleted
        # by IKE whose removal is queued. `resync` keeps exactly these.
        self.installed: dict[int, ChildRecord] = {}
        # Unfinished rekeys: the old CHILD_SA's inbound SPI -> the CHILD_SAs made from it
        # (two in a collision), kept while the old one lives or a new one waits to send.
        self.rekeys: dict[int, list[ChildRecord]] = {}
        self.lingering: dict[SaId, asyncio.TimerHandle] = {}  # rekeyed inbound SAs
        self.lingering_of: dict[SaId, str] = {}  # their connection
        # (connection, child) -> the last failed install, until one succeeds
        self.install_failures: dict[tuple[str, str], InstallFailure] = {}
        self.install_retry = install_retry
        self.install_seconds = 0.0
        self.resync_delay = resync_delay
        self._resync_backoff = resync_delay
        self._resync_queued = False
        self._jobs: deque[Job] = deque()
        self.queued = 0  # jobs ever queued (a caller sees whether its work added any)
        self.job_ready = asyncio.Event()
        self.jobs_idle = asyncio.Event()
        self.jobs_idle.set()
        # kernel work waits for the restore (its orphan removal must not see new SAs)
        self.ready = asyncio.Event()

    # ----------------------------------------------------------------- negotiated, deleted

    def add(self, event: ChildSaNegotiated, conf: cf.ChildConf, reqid: int,
            link: LinkSpec | None = None) -> ChildRecord:
        """A negotiated CHILD_SA: queue its install. A rekey we answered: the peer sends
        on the new SA once it has our response, we once it deleted the old one. In a
        collision (both rekeyed at once) we wait too, till the loser's SA is known. A
        replacement (a new CHILD_SA of a child that has one: changed configuration,
        reauthentication) is treated as a rekey of it and keeps its reqid: while both
        live, the peer's inbound policies accept either SA (templates match by reqid)."""
        old = event.rekey_of if event.rekey_of in self.children else self.replaced(event)
        install = build_child(event, conf, reqid)
        siblings = self.rekeys.setdefault(old, []) if old is not None else None
        pending = siblings is not None and (not event.initiator or any(
            c.event.spi_in in self.children for c in siblings))
        child = ChildRecord(event, install, install.inbound.reqid, self.clock(),
                            outbound_pending=pending, predecessor=old, conf=conf, link=link)
        self._keep(child)
        if siblings is not None:
            siblings.append(child)
        self.queue(child)
        return child

    def replaced(self, event: ChildSaNegotiated) -> int | None:
        """The CHILD_SA a new one (not a rekey) replaces: the newest of the same connection,
        child and peer address that nothing replaces yet. Another peer's CHILD_SA of the
        same connection (remote access) is never replaced: it keeps its outbound SA.
        The newest are looked at first, so a chain of replacements costs O(1) a setup."""
        found: ChildRecord | None = None
        for c in reversed(self._by_peer.get(_peer_key(event), {}).values()):
            if found is not None and c.installed_at < found.installed_at:
                break  # older than the one found (a tie goes to the first added)
            if c.event.spi_in != event.spi_in and c.state is not ChildRecordState.DELETED \
                    and not any(n.event.spi_in in self.children
                                for n in self.rekeys.get(c.event.spi_in, ())):
                found = c
        return found.event.spi_in if found is not None else None

    def _keep(self, child: ChildRecord) -> None:
        """Hold a CHILD_SA IKE has, by inbound SPI and by its peer (oldest first)."""
        self.children[child.event.spi_in] = child
        peers = self._by_peer.setdefault(_peer_key(child.event), {})
        newest = next(reversed(peers.values()), None)
        peers[child.event.spi_in] = child
        if newest is not None and newest.installed_at > child.installed_at:  # adopted, moved
            ordered = sorted(peers.values(), key=lambda c: c.installed_at)
            peers.clear()
            peers.update((c.event.spi_in, c) for c in ordered)

    def _drop(self, spi_in: int) -> ChildRecord | None:
        """Forget a CHILD_SA IKE no longer has."""
        child = self.children.pop(spi_in, None)
        if child is not None:
            key = _peer_key(child.event)
            peers = self._by_peer.get(key, {})
            peers.pop(spi_in, None)
            if not peers:
                self._by_peer.pop(key, None)
        return child

    def deleted(self, spi_in: int) -> ChildRecord | None:
        """IKE deleted a CHILD_SA: its kernel state goes (after the work queued so far)."""
        child = self._drop(spi_in)
        if child is not None:
            child.state = ChildRecordState.DELETED
            self.queue(functools.partial(self._retire, child))
        return child

    def adopt(self, child: ChildRecord) -> None:
        """A CHILD_SA the previous process installed (restart)."""
        self._set_installed(child)
        self._keep(child)

    def by_sa(self, spi: int) -> ChildRecord | None:
        """The CHILD_SA of an SA, by its inbound or outbound SPI."""
        if spi in self.children:
            return self.children[spi]
        return next((c for c in self.children.values() if c.event.spi_out == spi), None)

    # ----------------------------------------------------------------- the queue

    def queue(self, job: Job) -> None:
        self.queued += 1
        self._jobs.append(job)
        self.jobs_idle.clear()
        self.job_ready.set()

    async def drain(self) -> None:
        """Wait until every queued kernel job ran (tests and shutdown)."""
        await self.jobs_idle.wait()
        await asyncio.sleep(0)

    async def run(self) -> None:
        """The job loop (a task for the daemon's life)."""
        await self.ready.wait()
        while True:
            await self.job_ready.wait()
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    await self._run_job(job)
                except Exception:  # a kernel job must never stop the loop
                    log.exception("kernel job failed")
            self.job_ready.clear()
            self.jobs_idle.set()

    async def _run_job(self, job: Job) -> None:
        if isinstance(job, ChildRecord | SendAfter):
            # installs queued together go in one batch, then their datagrams
            batch: list[ChildRecord | SendAfter] = [job]
            while self._jobs and isinstance(self._jobs[0], ChildRecord | SendAfter):
                batch.append(self._jobs.popleft())  # type: ignore[arg-type]
            await self._install([j for j in batch if isinstance(j, ChildRecord)],
                                [d for j in batch if isinstance(j, SendAfter)
                                 for d in j.datagrams])
            return
        result = job()
        if asyncio.iscoroutine(result):
            await result

    # ----------------------------------------------------------------- install

    async def _install(self, batch: list[ChildRecord], datagrams: list[Datagram]) -> None:
        """Install CHILD_SAs in one netlink batch (each all-or-nothing on its own), then
        send the datagrams that announce them."""
        batch = [c for c in batch if c.state is not ChildRecordState.DELETED]
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
            self.host.send(datagram)
        for child, error in results:
            if error is None:
                self._set_installed(child)
                self.host.counters["kernel_installs"] += 1
                self.install_failures.pop((child.event.connection, child.event.child), None)
            else:
                self._install_failed(child, error)
        for child in batch:
            if child.in_kernel:
                await self.host.in_kernel(child)

    def _set_installed(self, child: ChildRecord) -> None:
        child.in_kernel = True
        self.installed[child.event.spi_in] = child

    def _install_failed(self, child: ChildRecord, exc: KernelError) -> None:
        """Nothing of it stayed in the kernel (rolled back): the host tells the peer it is
        gone and negotiates it again after a back-off (doubling per failure)."""
        event = child.event
        key = (event.connection, event.child)
        attempts = self.install_failures[key].attempts + 1 if key in self.install_failures \
            else 1
        # the exponent capped: 2.0 ** 1024 overflows after days of failures
        delay = min(INSTALL_RETRY_MAX, self.install_retry * 2.0 ** min(attempts - 1, 32))
        reason = kernel_reason(exc)
        self.install_failures[key] = InstallFailure(reason, attempts, self.clock() + delay)
        log.error("installing CHILD_SA %s/%s failed (attempt %d, again in %.0f s): %s",
                  *key, attempts, delay, reason)
        self.host.emit("ChildInstallFailed", {
            "connection": event.connection, "child": event.child, "ike_sa": event.ike_sa,
            "spi_in": event.spi_in, "reason": reason, "attempt": attempts,
            "retry_in": delay})
        self.host.failures["KERNEL_INSTALL"] = self.host.failures.get("KERNEL_INSTALL", 0) + 1
        self._drop(event.spi_in)
        child.state = ChildRecordState.FAILED
        self.host.install_failed(child, reason, delay)
        self.schedule_resync("a kernel install failed")  # an undo may have failed too

    # ----------------------------------------------------------------- rekeys, removal

    async def _retire(self, child: ChildRecord) -> None:
        """Remove a deleted CHILD_SA; a rekey's successor then sends on its own SA (before
        the old one goes), and a replaced CHILD_SA's inbound SA lingers. Only the rekeys
        it was part of are looked at, as the old CHILD_SA or as a new one."""
        rekeys = [k for k in (child.event.spi_in, child.predecessor) if k in self.rekeys]
        for old in rekeys:
            made = self.rekeys[old]
            while (ready := next((c for c in made if self._may_send(c)), None)) is not None:
                await self.add_outbound(ready)  # one at a time: each may block the next
        replaced = any(c.event.spi_in in self.children
                       for c in self.rekeys.get(child.event.spi_in, ()))
        await self.remove(child, linger=replaced)
        for old in rekeys:
            if old not in self.children and not any(
                    c.outbound_pending and c.event.spi_in in self.children
                    for c in self.rekeys[old]):
                del self.rekeys[old]  # done: the old one is gone, nobody waits

    def _may_send(self, waiting: ChildRecord) -> bool:
        """A CHILD_SA waiting for its outbound SA may have it now: its predecessor is
        gone, no sibling of the same rekey (a collision's) sends on its own, and the IKE
        core is not deleting it (a collision's loser)."""
        if not (waiting.outbound_pending and waiting.in_kernel):
            return False
        old = waiting.predecessor
        if old is None or old in self.children or any(
                c is not waiting and c.event.spi_in in self.children and not c.outbound_pending
                for c in self.rekeys.get(old, ())):
            return False
        state = self.host.child_state(waiting.event.ike_sa, waiting.event.spi_in)
        return state not in (None, ChildState.DELETING)

    async def add_outbound(self, child: ChildRecord) -> None:
        """The outbound SA of a CHILD_SA that waited for it."""
        try:
            await self.kernel.add_sa(child.install.outbound)
        except KernelError as exc:
            await self.remove(child)
            self._install_failed(child, exc)
            return
        child.outbound_pending = False

    async def complete_pending(self) -> None:
        """Every waiting outbound SA in (before the state is saved for a restart)."""
        for child in [c for c in self.children.values() if c.outbound_pending]:
            await self.add_outbound(child)

    async def remove(self, child: ChildRecord, linger: bool = False) -> None:
        """Take a CHILD_SA out of the kernel; with `linger` its inbound SA stays for
        `delete_rekeyed_delay` seconds."""
        if not child.in_kernel:
            return
        child.in_kernel = False
        self.installed.pop(child.event.spi_in, None)
        await self.host.leaving(child)
        delay = self.delete_rekeyed_delay()
        linger = linger and delay > 0
        try:
            await self.kernel.remove_child(child.install, inbound=not linger,
                                           outbound=not child.outbound_pending)
        except KernelError as exc:
            log.warning("removing CHILD_SA %s: %s", child.event.child, exc)
            self.schedule_resync(f"removing CHILD_SA {child.event.child} failed")
        if linger:
            self._linger(child.install.inbound.id, child.event.connection, delay)
        await self.host.left(child)

    async def remove_all(self) -> None:
        """Shutdown without keeping the tunnels: every CHILD_SA and lingering SA goes."""
        for child in list(self.children.values()):
            await self.remove(child)  # peers that did not answer our deletes in time
        self.children.clear()
        self._by_peer.clear()
        for sa_id in list(self.lingering):
            await self.delete_lingering(sa_id)

    def _linger(self, sa: SaId, connection: str, delay: float) -> None:
        self.lingering_of[sa] = connection

        def expired() -> None:
            self.queue(functools.partial(self.delete_lingering, sa))

        self.lingering[sa] = asyncio.get_running_loop().call_later(delay, expired)

    async def delete_lingering(self, sa: SaId) -> None:
        self.lingering_of.pop(sa, None)
        if (handle := self.lingering.pop(sa, None)) is not None:
            handle.cancel()
            try:
                await self.kernel.delete_sa(sa)  # ESRCH (expired meanwhile) passes
            except KernelError as exc:
                log.warning("deleting rekeyed SA %s: %s", sa, exc)
                self.schedule_resync("deleting a rekeyed SA failed")

    def forget_lingering(self, connection: str) -> None:
        """A connection with no IKE SA left: its lingering SAs go now."""
        for sa_id in [k for k, c in self.lingering_of.items() if c == connection]:
            self.queue(functools.partial(self.delete_lingering, sa_id))

    def cancel(self) -> None:
        for handle in self.lingering.values():
            handle.cancel()

    async def move(self, child: ChildRecord, moved: ChildSaNegotiated,
                   conf: cf.ChildConf) -> bool:
        """Re-address a CHILD_SA's SAs and policies: `moved` is its event with the new
        addresses, ports and encapsulation (a NAT mapping moved, or MOBIKE)."""
        old = child.event
        if not child.in_kernel or (old.local, old.remote, old.encap) == (
                moved.local, moved.remote, moved.encap):
            return False
        if child.outbound_pending:  # a move is rare: stop waiting for the old one's delete
            await self.add_outbound(child)
            if not child.in_kernel:
                return False
        event = moved
        install = build_child(event, conf, child.reqid)
        try:
            await self.kernel.move_child(child.install, install)
        except KernelError as exc:
            log.error("moving CHILD_SA %s to %s:%d - %s:%d: %s", event.child, *event.local,
                      *event.remote, exc)
            return False
        held = self._drop(child.event.spi_in) is not None
        child.event, child.install = event, install
        if held:
            self._keep(child)
        await self.host.in_kernel(child)  # its routes, now via the peer's new address
        return True

    # ----------------------------------------------------------------- resync

    def schedule_resync(self, why: str, delay: float | None = None) -> None:
        """Compare the kernel with what we believe in, soon (one pending at a time)."""
        if self._resync_queued:
            return
        self._resync_queued = True
        wait = self.resync_delay if delay is None else delay
        log.info("resynchronising with the kernel in %.1f s: %s", wait, why)
        asyncio.get_running_loop().call_later(
            wait, self.queue, functools.partial(self._resync, why))

    async def _resync(self, why: str) -> None:
        """Make the kernel hold exactly our CHILD_SAs, lingering SAs and traps; replace
        CHILD_SAs whose SAs vanished (a hard expire whose event was lost) and rekey those
        whose soft expire passed unnoticed. On failure, again with back-off."""
        self._resync_queued = False
        keep: set[SaKey] = {(sa.dst, sa.spi, sa.proto) for sa in self.lingering}
        policies = self.host.trap_policies()
        for child in self.installed.values():
            keep |= self._keys(child)
            policies += child.install.policies
        try:
            result = await self.kernel.resync(keep, policies)
        except KernelError as exc:
            self._resync_backoff = min(RESYNC_MAX, self._resync_backoff * 2)
            log.warning("resynchronising with the kernel failed: %s", exc)
            self.schedule_resync(why, self._resync_backoff)
            return
        self._resync_backoff = self.resync_delay
        log.info("resynchronised with the kernel (%s): removed %d SAs, %d policies; "
                 "restored %d policies; %d SAs missing", why, result.sas_removed,
                 result.policies_removed, result.policies_restored, len(result.missing_sas))
        now = self.clock()
        for child in list(self.installed.values()):
            if self._keys(child) & result.missing_sas:
                await self._lost(child)
            elif child.event.spi_in in self.children and \
                    child.state is ChildRecordState.INSTALLED and \
                    0 < child.install.inbound.lifetime.soft_add_expires_seconds <= \
                    now - child.installed_at:
                self.host.soft_expired(child)

    @staticmethod
    def _keys(child: ChildRecord) -> set[SaKey]:
        keys = {_key(child.install.inbound)}
        if not child.outbound_pending:
            keys.add(_key(child.install.outbound))
        return keys

    async def _lost(self, child: ChildRecord) -> None:
        """A CHILD_SA whose SA the kernel lost: remove the rest, replace it with the peer."""
        await self.remove(child)
        if self._drop(child.event.spi_in) is None:
            return  # IKE deleted it already
        child.state = ChildRecordState.DELETED
        self.host.lost(child)

