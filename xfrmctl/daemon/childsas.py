"""The IKE side of CHILD_SAs: negotiated and deleted ones go to the installer, kernel
events about them (expire, NAT mapping) go back to the IKE core, and virtual IPs. It is
the installer's host (installer.InstallerHost)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from xfrmctl.ike.config import Mode
from xfrmctl.ike.errors import LocalError
from xfrmctl.ike.events import (
    ChildSaDeleted,
    ChildSaNegotiated,
    PeerMoved,
    VirtualIpAssigned,
)
from xfrmctl.ike.sa import ChildState, Datagram, Endpoint, IkeState
from xfrmctl.kernel.nft import FirewallError
from xfrmctl.kernel.types import Expire, KernelError, PolicySpec
from xfrmctl.kernel.types import Mapping as KernelMapping
from xfrmctl.port import DownReason

from .install import interface_mtu
from .mss import DEFAULT_PATH_MTU, child_mss
from .records import ChildDown, ChildRecord
from .routelinks import link_spec
from .traps import hold_routes

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("xfrmctl.daemon")
VIP_DEVICE = "lo"


class ChildSas:
    """CHILD_SA events between the IKE core and the installer."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    @property
    def counters(self) -> dict[str, int]:
        return self.c.counters

    @property
    def failures(self) -> dict[str, int]:
        return self.c.failures

    def send(self, datagram: Datagram) -> None:
        self.c.send(datagram)

    def emit(self, kind: str, fields: dict[str, object]) -> None:
        self.c.emit(kind, fields)

    def on_child(self, event: ChildSaNegotiated) -> None:
        self.c.counters["child_setups"] += 1
        record = self.c.connections.get(event.connection)
        child_conf = record.conf.children.get(event.child) if record else None
        if child_conf is None:  # removed from the configuration while it was negotiated
            log.warning("CHILD_SA %s/%s is no longer configured: deleting it",
                        event.connection, event.child)
            self.delete_with_peer(event, "not configured")
            return
        assert record is not None
        record.child_down.pop(event.child, None)
        self.c.installer.add(event, child_conf, self.c.reqid(event.connection, event.child),
                             link_spec(record.conf, child_conf))
        self.c.changes.reauth_child_done(event.ike_sa, event.child)
        replaces = self.c._replace_after.pop((event.ike_sa, event.child), ())
        if replaces and event.rekey_of is None:
            self.c.installer.queue(lambda: self.c.changes.delete_replaced(event.ike_sa, replaces))
        if child_conf.interface_name and child_conf.mtu is None:
            name, mtu = child_conf.interface_name, interface_mtu(event)
            self.c.installer.queue(lambda: self.set_mtu(name, mtu))

    def delete_with_peer(self, event: ChildSaNegotiated, reason: str) -> None:
        """Delete a CHILD_SA we will not keep, telling the peer (INFORMATIONAL)."""
        sa = self.c.manager.get(event.ike_sa)
        if sa is not None and sa.state is IkeState.ESTABLISHED:
            now, spi_in = self.c.clock(), event.spi_in
            with contextlib.suppress(LocalError):  # the peer may have deleted it meanwhile
                self.c.manager.act(sa, lambda s: s.delete_child(spi_in, now, reason))
            self.c._flush()

    def on_child_deleted(self, event: ChildSaDeleted) -> None:
        self.c.installer.deleted(event.spi_in)
        record = self.c.connections.get(event.connection)
        if record is not None and not any(
                c.event.ike_sa == event.ike_sa and c.event.child == event.child
                for c in self.children_of(event.ike_sa)):
            reason = DownReason.of(event.reason)
            known = record.child_down.get(event.child)
            if known is None or known.reason is not reason:  # else keep what it knows
                detail: dict[str, object] = {"message": event.reason}
                record.child_down[event.child] = ChildDown(reason, detail, self.c.clock())

    def children_of(self, ike_sa: int) -> list[ChildRecord]:
        """The CHILD_SAs of one IKE_SA (the IKE core's list, so no scan of every child)."""
        sa = self.c.manager.get(ike_sa)
        spis = [c.spi_in for c in sa.children.values()] if sa is not None else []
        return [self.c.children[spi] for spi in spis if spi in self.c.children]

    def on_vip(self, event: VirtualIpAssigned) -> None:
        log.info("virtual IP %s %s for %s", event.address,
                 "assigned" if event.to_peer else "received", event.connection)
        if not event.to_peer and self.c.links is not None:
            # A client uses its virtual IP as the source of tunnelled traffic: put it on
            # the loopback device while the IKE SA lives.
            address = f"{event.address}/{32 if ':' not in event.address else 128}"
            self.c._vips[event.ike_sa] = address
            self.c.installer.queue(lambda: self.vip_address(address, add=True))

    async def vip_address(self, address: str, add: bool) -> None:
        assert self.c.links is not None
        try:
            if add:
                await self.c.links.add_address(VIP_DEVICE, address)
            else:
                await self.c.links.delete_address(VIP_DEVICE, address)
        except KernelError as exc:
            log.warning("virtual IP %s on %s: %s", address, VIP_DEVICE, exc)

    def child_state(self, ike_sa: int, spi_in: int) -> ChildState | None:
        sa = self.c.manager.get(ike_sa)
        return sa.child_state(spi_in) if sa is not None else None

    def install_failed(self, child: ChildRecord, reason: str, delay: float) -> None:
        event = child.event
        record = self.c.connections.get(event.connection)
        if record is not None:
            record.child_down[event.child] = ChildDown(
                DownReason.KERNEL_INSTALL_FAILED, {"message": reason}, self.c.clock())
        self.delete_with_peer(event, DownReason.KERNEL_INSTALL_FAILED.value)
        asyncio.get_running_loop().call_later(delay, self.retry_install, event)

    def lost(self, child: ChildRecord) -> None:
        sa = self.c.manager.get(child.event.ike_sa)
        if sa is not None and sa.state is IkeState.ESTABLISHED:
            record = self.c.connections.get(child.event.connection)
            configured = record is not None and child.event.child in record.conf.children
            with contextlib.suppress(LocalError, ValueError, KeyError):
                self.c.changes.replace_lost_child(sa, child.event, configured, self.c.clock())
            self.c._flush()

    def soft_expired(self, child: ChildRecord) -> None:
        self.on_expire(Expire(child.install.inbound.id, False, child.reqid))

    def trap_policies(self) -> list[PolicySpec]:
        return [p for record in self.c.connections.values() for p in record.traps]

    async def in_kernel(self, child: ChildRecord) -> None:
        await self.hold_child_routes(child)
        await self.hold_mss(child)

    async def leaving(self, child: ChildRecord) -> None:
        if child.link is not None:  # its interface goes before it, if nothing else uses it
            await self.c._sync_links()

    async def left(self, child: ChildRecord) -> None:
        if self.c.routes is not None:
            await self.c.routes.release(child.event.spi_in)
        if self.c.mss is not None:
            await self.c.mss.release(child.event.spi_in)

    def retry_install(self, failed: ChildSaNegotiated) -> None:
        """Negotiate a child again whose install failed: rekey its predecessor if that
        still lives, else create it on its IKE SA unless one of its name is there."""
        sa = self.c.manager.get(failed.ike_sa)
        if sa is None or sa.state is not IkeState.ESTABLISHED:
            return  # the connection's own retry (start action, DPD, close action) rules
        now, name, old = self.c.clock(), failed.child, failed.rekey_of
        if old is None or old not in self.c.children:
            if any(c.event.ike_sa == sa.id and c.event.child == name
                   for c in self.c.children.values()):
                return  # a CHILD_SA of that name is up (or coming) again
            old = None
        with contextlib.suppress(LocalError, ValueError, KeyError):
            if old is not None:
                self.c.manager.act(sa, lambda s: s.rekey_child(old, now))
            else:
                self.c.manager.act(sa, lambda s: s.create_child(name, now))
        self.c._flush()

    async def hold_child_routes(self, child: ChildRecord) -> None:
        event = child.event
        record = self.c.connections.get(event.connection)
        conf = record.conf.children.get(event.child) if record else None
        if conf is None or conf.interface_kind is not None or event.mode is not Mode.TUNNEL:
            return  # route-based (its interface has the routes) or transport
        vip = self.c._vips.get(event.ike_sa)
        await hold_routes(self.c.routes, event.spi_in, event.local_ts, event.remote_ts,
                          event.remote[0], vip.split("/")[0] if vip else None)

    async def hold_mss(self, child: ChildRecord) -> None:
        """A CHILD_SA's MTU after ESP on the path to the peer, and with `mss` on, the
        rules that clamp TCP SYNs through it (before its predecessor's go)."""
        conf = child.conf
        if conf is None or conf.mss == "off" or self.c.mss is None:
            return
        event = child.event
        result = child_mss(event, conf, await self.path_mtu(event.remote[0]),
                           child.link.name if child.link is not None else None)
        try:
            await self.c.mss.hold(event.spi_in, result.rules)
        except FirewallError as exc:
            log.error("MSS clamping for CHILD_SA %s/%s: %s", event.connection, event.child, exc)
            self.c.emit("MssClampFailed", {"connection": event.connection,
                                           "child": event.child, "reason": str(exc)})
            child.mtu, child.mss = result.mtu, None
            return
        child.mtu, child.mss = result.mtu, result.mss

    async def path_mtu(self, peer: str) -> int:
        """The MTU of the interface the kernel sends to `peer` by."""
        if self.c.links is None:
            return DEFAULT_PATH_MTU
        try:
            hop = await self.c.links.next_hop(peer)
            return await self.c.links.link_mtu(hop.oif)
        except KernelError as exc:
            log.warning("path MTU towards %s: %s (taking %d)", peer, exc, DEFAULT_PATH_MTU)
            return DEFAULT_PATH_MTU

    async def set_mtu(self, name: str, mtu: int) -> None:
        if self.c.links is not None:
            try:
                await self.c.links.set_mtu(name, mtu)
            except KernelError as exc:
                log.warning("MTU %d on %s: %s", mtu, name, exc)

    def on_mapping(self, event: KernelMapping) -> None:
        """ESP-in-UDP from the peer arrived from a new address or port (its NAT rebound):
        the IKE SA follows when the peer is behind a NAT and we are not."""
        child = self.c.children.get(event.sa.spi)
        sa = self.c.manager.get(child.event.ike_sa) if child is not None else None
        if sa is None:
            return
        moved = (str(event.new_src), event.new_sport)
        if moved != sa.remote:
            self.c.manager.act(sa, lambda s: s.peer_moved(moved))
            self.c._flush()

    def on_peer_moved(self, event: PeerMoved) -> None:
        for child in [c for c in self.c.children.values() if c.event.ike_sa == event.ike_sa]:
            self.c.installer.queue(functools.partial(self.move_child, child, event.new))

    async def move_child(self, child: ChildRecord, remote: Endpoint) -> None:
        """Re-address a CHILD_SA's SAs and policies to the peer's new endpoint."""
        record = self.c.connections.get(child.event.connection)
        conf = record.conf.children.get(child.event.child) if record else None
        if conf is not None:
            await self.c.installer.move(child, replace(child.event, remote=remote), conf)

    def on_expire(self, event: Expire) -> None:
        child = self.c.installer.by_sa(event.sa.spi)
        if child is None:
            return
        sa = self.c.manager.get(child.event.ike_sa)
        if sa is None:
            return
        now = self.c.clock()
        spi_in = child.event.spi_in
        if event.hard:
            self.c.manager.act(sa, lambda s: s.delete_child(spi_in, now, "hard expire"))
        elif sa.child_state(spi_in) is ChildState.INSTALLED:  # once per CHILD_SA
            with contextlib.suppress(LocalError):
                self.c.manager.act(sa, lambda s: s.rekey_child(spi_in, now))
        self.c._flush()

