"""MOBIKE's daemon side (RFC 4555): the kernel's address and route events go to the IKE
core as "our address set changed", and IKE_SAs the core moved take their CHILD_SAs along.

- Address and route events come in bursts (an address goes, its routes go, a new one
  comes): they are collected for ROAM_DELAY, then looked at once. The IKE sockets follow
  the addresses when `listen` is not configured (sockets for new addresses, none for
  gone ones).
- For each IKE_SA this end may move (MOBIKE negotiated, we its original initiator), the
  kernel is asked which address it now uses towards the peer (`ip route get`); that and
  our other addresses go to the core (`IkeSa.addresses_changed`), which sends the
  UPDATE_SA_ADDRESSES when the address is a new one. An address we have no socket on
  counts as none (the SA waits for a usable one).
- IkeSaMoved (either role): every CHILD_SA of the IKE_SA is moved in the kernel to the
  new addresses, ports and encapsulation, keeping SPIs and sequence numbers; its routes
  follow (the installer's move). A move the kernel refuses leaves the old SAs whole; the
  CHILD_SA is then rekeyed, which makes the new one at the new addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from xfrmctl.ike.errors import LocalError
from xfrmctl.ike.events import IkeSaMoved
from xfrmctl.ike.sa import IkeSa, IkeState
from xfrmctl.kernel.types import AddressChange, KernelError, RouteChange

from .records import ChildRecord

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("xfrmctl.daemon")
ROAM_DELAY = 0.2  # seconds to let a burst of address/route events settle


class Mobility:
    def __init__(self, controller: Controller) -> None:
        self.c = controller
        # Set by the daemon when it listens on every address (no `listen`): opens and
        # closes the IKE sockets for the addresses given; returns those it listens on.
        self.sync_sockets: Callable[[Sequence[str]], Awaitable[Sequence[str]]] | None = None
        self.listening: Callable[[], Sequence[str]] = lambda: self.c.conf.listen
        self._timer: asyncio.TimerHandle | None = None
        self._checks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- kernel events

    def on_kernel_event(self, event: AddressChange | RouteChange) -> None:
        if isinstance(event, RouteChange) and event.table == self.c.conf.route_table:
            return  # our own routes to the remote subnets: not a change of path
        if isinstance(event, AddressChange):
            log.info("address %s %s", event.address, "added" if event.added else "removed")
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(ROAM_DELAY, self._start_check)

    def _start_check(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.check(), name="mobike-roam")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def check(self) -> None:
        """Look at our addresses now and move the IKE_SAs whose path changed."""
        vips = {v.split("/")[0] for v in self.c._vips.values()}  # ours inside the tunnel
        try:
            addresses = [str(a) for a in await self.c.kernel.local_addresses()
                         if str(a) not in vips]
        except KernelError as exc:
            log.warning("MOBIKE: cannot list the local addresses: %s", exc)
            return
        usable = await self._sockets(addresses)
        for sa in [s for s in self.c.manager.all() if self._movable(s)]:
            await self._roam(sa, usable)
        self.c._flush()

    async def _sockets(self, addresses: list[str]) -> list[str]:
        if self.sync_sockets is not None:
            return list(await self.sync_sockets(addresses))
        listen = set(self.listening())  # (none configured, no sockets to follow: any)
        return [a for a in addresses if not listen or a in listen]

    @staticmethod
    def _movable(sa: IkeSa) -> bool:
        return sa.mobike and sa.original_initiator and sa.state is IkeState.ESTABLISHED

    async def _roam(self, sa: IkeSa, usable: list[str]) -> None:
        peer = ipaddress.ip_address(sa.remote[0])
        try:
            source = await self.c.kernel.source_address(peer)
        except KernelError as exc:
            log.warning("MOBIKE: no route lookup towards %s: %s", peer, exc)
            return
        local = str(source) if source is not None and str(source) in usable else None
        if local is None:
            log.info("IKE_SA %s: no usable address towards %s yet", sa.name, peer)
        others = [a for a in usable if a != local]
        now = self.c.clock()
        self.c.manager.act(sa, lambda s: s.addresses_changed(local, others, now))

    # ----------------------------------------------------------------- the IKE core's move

    def on_moved(self, event: IkeSaMoved) -> None:
        log.info("IKE_SA %s moved: %s:%d - %s:%d (NAT: ours %s, peer's %s)",
                 event.connection, *event.local, *event.remote, event.nat_local,
                 event.nat_remote)
        for child in self.c.child_sas.children_of(event.ike_sa):
            self.c.installer.queue(functools.partial(self.move_child, child, event))

    async def move_child(self, child: ChildRecord, event: IkeSaMoved) -> None:
        record = self.c.connections.get(child.event.connection)
        conf = record.conf.children.get(child.event.child) if record else None
        if conf is None:
            return
        moved = replace(child.event, local=event.local, remote=event.remote,
                        encap=event.nat_local or event.nat_remote)
        await self.c.installer.move(child, moved, conf)
        old = child.event
        if child.in_kernel and (old.local, old.remote, old.encap) != (
                moved.local, moved.remote, moved.encap):
            self._replace(child)  # the kernel refused the move: the old SAs are whole

    def _replace(self, child: ChildRecord) -> None:
        """A CHILD_SA left at the old addresses: rekey it, so the new one is made at the
        IKE_SA's new addresses (make-before-break; the old one goes after)."""
        sa = self.c.manager.get(child.event.ike_sa)
        if sa is None or sa.state is not IkeState.ESTABLISHED:
            return
        spi_in, now = child.event.spi_in, self.c.clock()
        log.warning("CHILD_SA %s could not be moved: rekeying it at the new addresses",
                    child.event.child)
        with contextlib.suppress(LocalError):  # already rekeying: that one moves it
            self.c.manager.act(sa, lambda s: s.rekey_child(spi_in, now))
        self.c._flush()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._checks):
            task.cancel()
